"""Ghosts: which ids are no longer configured and what clears them (pure, no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bridge.adapters.mqtt import _refused
from bridge.core.outbox import Outbox
from bridge.presentation.homie import HomiePublisher, nodes_without
from bridge.presentation.topics import TopicLayout
from bridge.runtime.ghosts import (
    Cleared,
    Ghost,
    clearing_plan,
    discovery_topics_of,
    foreign_publishers,
    ghost_ids,
    homie_node_of,
    subscriptions,
)
from bridge.tools.cli import main
from bridge.tools.exitcodes import EXIT_USAGE

LAYOUT = TopicLayout("twc3")
HOMIE = "homie/twc3-bridge"


def test_a_renamed_or_removed_id_is_a_ghost() -> None:
    """An id whose id and connector key are both gone from the config is a ghost."""
    published = {"old": "old", "kept": "kept", "pt1": "10.0.0.5", "pt2": "10.0.0.6"}
    ghosts = ghost_ids(published, {"kept", "new"}, {"kept", "new", "10.0.0.6"})
    assert ghosts == {"old": "old", "pt1": "10.0.0.5"}


def test_a_serial_named_unit_of_a_configured_connector_is_no_ghost() -> None:
    """A unit named by its serial is kept while its address entry stays, polled or not."""
    assert ghost_ids({"pt1": "10.0.0.5"}, set(), {"10.0.0.5"}) == {}
    # The same entry given an id: the serial-named topics are left behind.
    assert ghost_ids({"pt1": "10.0.0.5"}, {"garage"}, {"garage"}) == {"pt1": "10.0.0.5"}


def test_an_id_configured_again_under_another_entry_is_no_ghost() -> None:
    """An id moved to another address is still configured."""
    assert ghost_ids({"garage": "10.0.0.5"}, {"garage"}, {"garage"}) == {}


def test_discovery_topics_of_one_owner() -> None:
    """Only the owner's configs."""
    announced = {"ha/sensor/a/config": "old", "ha/sensor/b/config": "new", "ha/x/c/config": "old"}
    assert discovery_topics_of(announced, "old") == ("ha/sensor/a/config", "ha/x/c/config")


def test_a_homie_node_a_configured_id_now_has_is_not_cleared() -> None:
    """Renaming old_a to old-a keeps the node id: clearing it would clear the live node."""
    assert homie_node_of("old_a", {"old-a"}) is None
    assert homie_node_of("old_a", {"new"}) == "old-a"


def test_subscriptions_cover_each_id_its_node_and_nodes() -> None:
    """One filter per id and node, plus $nodes."""
    ghosts = [Ghost("old", homie_node="old"), Ghost("gone")]
    assert subscriptions(LAYOUT, ghosts, HOMIE) == [
        "twc3/old/#",
        "twc3/gone/#",
        "homie/twc3-bridge/old/#",
        "homie/twc3-bridge/$nodes",
    ]
    assert subscriptions(LAYOUT, ghosts, None) == ["twc3/old/#", "twc3/gone/#"]


RETAINED = {
    "twc3/old/availability": "online",
    "twc3/old/vitals/grid_v": "230",
    "twc3/older/availability": "online",  # another id sharing the prefix: not ours
    "twc3/new/availability": "online",
    "homie/twc3-bridge/$nodes": "old,new",
    "homie/twc3-bridge/old/$name": "Old",
    "homie/twc3-bridge/old/grid-v": "230",
    "homie/twc3-bridge/older/$name": "Older",
}


def test_the_plan_clears_only_the_ghosts_topics_and_rewrites_nodes_first() -> None:
    """$nodes first without the node, then configs, then the id's and the node's topics."""
    ghost = Ghost("old", ("ha/sensor/old_v/config",), "old")
    plan = clearing_plan(RETAINED, LAYOUT, [ghost], HOMIE, rewrite_nodes=True)
    assert plan.messages == [
        ("homie/twc3-bridge/$nodes", "new"),
        ("ha/sensor/old_v/config", ""),
        ("twc3/old/availability", ""),
        ("twc3/old/vitals/grid_v", ""),
        ("homie/twc3-bridge/old/$name", ""),
        ("homie/twc3-bridge/old/grid-v", ""),
    ]
    assert plan.cleared == [Cleared("old", retained=2, discovery=1, homie_node="old")]


def test_a_running_bridge_leaves_nodes_to_its_publisher() -> None:
    """Without rewrite_nodes the plan never touches $nodes."""
    plan = clearing_plan(RETAINED, LAYOUT, [Ghost("old", (), "old")], HOMIE, rewrite_nodes=False)
    assert all(topic != "homie/twc3-bridge/$nodes" for topic, _ in plan.messages)
    assert ("homie/twc3-bridge/old/$name", "") in plan.messages


def test_an_id_with_nothing_left_clears_nothing() -> None:
    """Nothing retained: nothing published, and the report says so."""
    plan = clearing_plan({}, LAYOUT, [Ghost("gone", (), "gone")], HOMIE, rewrite_nodes=True)
    assert plan.messages == []
    assert plan.cleared == [Cleared("gone")]
    assert plan.cleared[0].describe() == (
        "removed unit gone: cleared 0 retained topic(s), 0 discovery config(s)"
    )


@pytest.mark.parametrize(
    ("nodes", "gone", "expected"),
    [("a,b,c", ["b"], "a,c"), ("a", ["a"], ""), ("a,b", ["x"], "a,b"), ("a,,b", ["a"], "b")],
)
def test_nodes_without(nodes: str, gone: list[str], expected: str) -> None:
    """The listed node ids go, the order of the rest stays."""
    assert nodes_without(nodes, gone) == expected


def test_the_publisher_rewrites_nodes_as_it_knows_them() -> None:
    """With no node yet $nodes is deleted; with nodes it lists them."""
    outbox = Outbox()
    publisher = HomiePublisher(outbox, "homie", "twc3-bridge", "Bridge")
    publisher.publish_nodes()
    assert outbox.get("homie/twc3-bridge/$nodes") is None
    deletions = [m.topic for m in outbox.pending() if m.payload == ""]
    assert "homie/twc3-bridge/$nodes" in deletions
    publisher.update_unit("new", None, {("vitals", "grid_v"): 230.0})
    publisher.publish_nodes()
    assert outbox.get("homie/twc3-bridge/$nodes") == "new"


def test_configs_the_announcer_removes_are_counted_not_cleared() -> None:
    """In the running bridge the announcer removes the configs: the plan only counts them."""
    ghost = Ghost("old", ("ha/sensor/s1_v/config",), None, clear_discovery=False)
    plan = clearing_plan(RETAINED, LAYOUT, [ghost], None, rewrite_nodes=False)
    assert plan.messages == [("twc3/old/availability", ""), ("twc3/old/vitals/grid_v", "")]
    assert plan.cleared == [Cleared("old", retained=2, discovery=1)]


@pytest.mark.parametrize(
    ("unit_id", "said"),
    [("beta", "beta is still configured"), ("a/b", "is no unit id"), ("#", "is no unit id")],
)
def test_forget_refuses_a_configured_or_invalid_id_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unit_id: str, said: str
) -> None:
    """One line and exit 2, with no broker needed (port 1 would refuse)."""
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
        f'[bridge]\ndata_dir = "{tmp_path}"\n'
        '[[connectors]]\nhost = "127.0.0.1:8780"\nid = "beta"\n'
    )
    assert main(["forget", "alpha", unit_id, "--config", str(config)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert said in err[0]


def test_only_another_processs_state_topic_makes_a_ghost_foreign() -> None:
    retained = {
        "twc3/moved/poller/publisher": "twc3/bridge/east/state",
        "twc3/mine/poller/publisher": "twc3/bridge/state",
        "twc3/forged/poller/publisher": "twc3/bridge/+/state",
        "twc3/elsewhere/poller/publisher": "other/bridge/state",
    }
    ghosts = [Ghost(uid) for uid in ("moved", "mine", "forged", "elsewhere", "unmarked")]
    assert foreign_publishers(retained, LAYOUT, ghosts) == {"moved": "twc3/bridge/east/state"}


def test_a_unit_live_elsewhere_is_left_out_of_the_plan() -> None:
    retained = {"twc3/moved/availability": "online", "twc3/gone/availability": "online"}
    plan = clearing_plan(
        retained,
        LAYOUT,
        [Ghost("moved"), Ghost("gone")],
        None,
        rewrite_nodes=False,
        live_elsewhere={"moved"},
    )
    assert plan.messages == [("twc3/gone/availability", "")]
    assert [done.unit_id for done in plan.cleared] == ["gone"]


def test_a_suback_refusal_is_read_in_both_protocol_versions() -> None:
    """Brokers that refuse a denied subscription say so in the SUBACK.

    Mosquitto grants it and delivers nothing, which cannot be told from an empty tree.
    """
    assert _refused((128,))
    assert _refused([ReasonCode(PacketTypes.SUBACK, identifier=0x87)])
    assert not _refused((1,))
    assert not _refused([ReasonCode(PacketTypes.SUBACK, identifier=1)])
