"""twc3-mqtt-bridge: Tesla Wall Connector Gen 3 local API to MQTT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("twc3-mqtt-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
