"""Fault suite: a unit inventing new field names on every read stays within its field budget."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from bridge.core.fieldbudget import FIELD_CAP
from bridge.sim.simulator import JsonBody, SimulatedUnit, UnitServer
from tests.conftest import Broker, wait_for_retained
from tests.test_fault_suite import (
    assert_clean_log,
    connector_block,
    polling,
    run_bridge,
    wait_until,
)

NAMES_PER_READ = 200
RETIRE_S = 4


class ChurningUnit(SimulatedUnit):
    """A simulated unit whose vitals carry ``NAMES_PER_READ`` never-seen names on every read."""

    def __init__(self, serial: str) -> None:
        super().__init__(serial, seed=61)
        self.reads = 0

    def vitals(self) -> JsonBody:
        """The real vitals plus new keys."""
        body = super().vitals()
        self.reads += 1
        for index in range(NAMES_PER_READ):
            body[f"churn_{self.reads}_{index}"] = index
        return body


def _churn_counts(found: dict[str, str]) -> dict[str, int]:
    """How many invented names each kind of retained topic holds."""
    homie_properties = {
        topic.split("/")[3] for topic in found if topic.startswith("homie/twc3-bridge/churn/churn-")
    }
    return {
        "field": sum(t.startswith("twc3/churn/vitals/churn_") for t in found),
        "discovery": sum(t.startswith("homeassistant/") and "churn_" in t for t in found),
        "homie": len(homie_properties),
    }


def _later_names_replaced_the_first(found: dict[str, str], first_reads: int) -> bool:
    """The names of the first read were retired, names of reads after ``first_reads`` admitted."""
    fields = [t for t in found if t.startswith("twc3/churn/vitals/churn_")]
    return not any(t.startswith("twc3/churn/vitals/churn_1_") for t in fields) and any(
        int(t.split("_")[1]) > first_reads for t in fields
    )


@pytest.mark.broker
async def test_a_name_churning_unit_stays_bounded(broker: Broker, tmp_path: Path) -> None:
    """200 new names a second: topics, discovery and Homie hold at most the cap; reported once."""
    unit = ChurningUnit("SIMFSCHURN01")
    samples: list[dict[str, int]] = []
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(UnitServer(unit))
        body = (
            f"\n[bridge]\ndata_dir = {json.dumps(str(tmp_path / 'data'))}\n"
            f"field_retire_s = {RETIRE_S}\n"
            '[homeassistant]\ndiscovery = "entity"\n[homie]\nenabled = true\n'
            + polling()
            + connector_block("churn", server)
        )
        bridge = await stack.enter_async_context(run_bridge(tmp_path, broker.port, body))
        async with asyncio.timeout(90):
            found = await wait_for_retained(
                broker.port,
                lambda f: (
                    "twc3/churn/poller/refused_fields" in f
                    and "homie/twc3-bridge/churn/$properties" in f
                ),
                limit_s=30,
            )
            samples.append(_churn_counts(found))
            first_reads = unit.reads
            # Several retirement rounds: the first names retire, later ones take their place.
            target = first_reads + 5 * RETIRE_S
            await wait_until(lambda: unit.reads >= target, 60, "five retirement rounds of reads")
            # Waited for, not sampled once: on a loaded machine one quiet gap can cut a read short.
            found = await wait_for_retained(
                broker.port,
                lambda f: _later_names_replaced_the_first(f, first_reads),
                limit_s=30,
            )
            samples.append(_churn_counts(found))
        assert bridge.alive(), bridge.log_text()[-3000:]
        refusal_lines = bridge.unit_lines("churn", "field names")

    served = unit.reads * NAMES_PER_READ
    assert served > 10 * FIELD_CAP
    for sample in samples:
        assert 0 < sample["field"] <= FIELD_CAP, samples
        assert 0 < sample["discovery"] <= FIELD_CAP, samples
        assert 0 < sample["homie"] <= FIELD_CAP, samples
    assert _later_names_replaced_the_first(found, first_reads)
    assert int(found["twc3/churn/poller/refused_fields"]) > served // 2
    assert "grid_v" in json.loads(found["twc3/churn/vitals"])
    assert "twc3/churn/vitals/grid_v" in found
    assert len(refusal_lines) == 1, refusal_lines
    assert f"more than {FIELD_CAP} field names" in refusal_lines[0]
    assert_clean_log(bridge)
