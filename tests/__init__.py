"""Tests of twc3-mqtt-bridge (a package so tests can share helpers from conftest)."""
