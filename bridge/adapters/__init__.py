"""The I/O adapters: HTTP to the units and MQTT to the broker."""
