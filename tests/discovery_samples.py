"""The site and unit the discovery and announcer tests share."""

from __future__ import annotations

from typing import Final

from bridge.presentation.discovery import Site, UnitInfo

SITE: Final = Site(prefix="homeassistant", base_topic="twc3")
GARAGE: Final = UnitInfo(
    unit_id="garage",
    serial="TEST0001",
    name="Garage",
    part_number="1529455-02-D",
    firmware="25.34.1+gtest",
    mac="AA:BB:CC:DD:EE:01",
    configuration_url="http://192.0.2.50/",
)
