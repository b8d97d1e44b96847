"""flower-eec uses Flower's public API; the one place that cannot is pinned here.

If a Flower release changes what ``flower_eec.grid.flower_internals`` relies on, or adds a Grid
method that ``ForwardingGrid`` does not forward, a test here fails rather than a run.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from pathlib import Path

import flwr.simulation
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from flower_eec.grid.edge import EdgeGrid
from flower_eec.grid.flower_internals import set_message_id, set_task_identity, task_identity
from flower_eec.grid.forwarding import ForwardingGrid
from flower_eec.grid.local import LocalGrid
from flower_eec.grid.metered import MeteredGrid
from flower_eec.run.config import resolve
from flower_eec.run.simulation import RunConfigMod, simulation_apps

ROOT = Path(__file__).resolve().parents[1]
INTERNALS = ROOT / "flower_eec" / "grid" / "flower_internals.py"
SOURCES = sorted([*(ROOT / "flower_eec").rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
                  *(ROOT / "examples").rglob("*.py")])


def flwr_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from flwr... import name`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr":
            found += [(str(node.module), alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("flwr")]
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_public_flower_names_are_imported(path: Path) -> None:
    for module, name in flwr_imports(path):
        assert not any(part.startswith("_") for part in module.split(".")), module
        assert not name.startswith("_"), f"{module}.{name}"
        if path == INTERNALS:
            continue
        assert "strategy_utils" not in module and name != "TaskIdentity", f"{module}.{name}"
        exported = getattr(importlib.import_module(module), "__all__", None)
        if name and exported is not None:
            assert name in exported, f"{module} does not export {name}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_state_is_touched_outside_the_internals_module(path: Path) -> None:
    if path == INTERNALS:
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            assert node.attr != "__dict__", f"{path.name}:{node.lineno} reaches into __dict__"
        if isinstance(node, ast.Name):
            assert node.id != "TaskIdentity", f"{path.name}:{node.lineno} uses TaskIdentity"


# --- what flower_internals relies on ------------------------------------------------------------


def test_the_task_identity_is_what_new_messages_carry() -> None:
    set_task_identity(run_id=42, task_id=3, node_id=0)

    message = Message(RecordDict(), dst_node_id=7, message_type="train")

    assert (message.metadata.run_id, message.metadata.src_node_id) == (42, 0)
    assert message.metadata.src_task_id == 3


def test_task_identity_restores_the_previous_one() -> None:
    with task_identity(run_id=5):
        assert Message(RecordDict(), dst_node_id=7, message_type="train").metadata.run_id == 5
    with task_identity(run_id=9):
        with task_identity(run_id=10):
            pass
        assert Message(RecordDict(), dst_node_id=7, message_type="train").metadata.run_id == 9


def test_a_set_message_id_is_named_by_the_reply() -> None:
    message = Message(RecordDict(), dst_node_id=7, message_type="train")

    set_message_id(message, "m42")

    assert message.metadata.message_id == "m42"
    reply = Message(RecordDict(), reply_to=message)
    assert reply.metadata.reply_to_message_id == "m42"
    assert reply.metadata.src_node_id == 7


def test_local_grid_replies_name_their_messages() -> None:
    def echo(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)

    grid = LocalGrid(echo, 2)
    messages = [Message(RecordDict(), dst_node_id=n, message_type="query.echo")
                for n in (1000, 1001)]

    ids = list(grid.push_messages(messages))
    replies = list(grid.pull_messages(ids))

    assert [m.metadata.message_id for m in messages] == ids
    assert [r.metadata.reply_to_message_id for r in replies] == ids


# --- forwarding -----------------------------------------------------------------------------------


def test_forwarding_grid_forwards_every_public_grid_method() -> None:
    public = {name for name in dir(Grid) if not name.startswith("_")}

    assert public - set(vars(ForwardingGrid)) == set()
    assert "get_nodes" in public


def test_get_nodes_is_forwarded_and_an_edge_sees_only_its_nodes() -> None:
    local = LocalGrid(lambda msg, context: msg, 4)

    assert [n.node_id for n in MeteredGrid(local).get_nodes()] == [1000, 1001, 1002, 1003]
    edge = EdgeGrid(MeteredGrid(local), [1003, 1001])
    assert sorted(n.node_id for n in edge.get_nodes()) == [1001, 1003]
    assert list(edge.get_node_ids()) == [1003, 1001]


def test_an_edge_grid_refuses_to_send() -> None:
    edge = EdgeGrid(LocalGrid(lambda msg, context: msg, 2), [1000])
    message = Message(RecordDict(), dst_node_id=1000, message_type="train")

    with pytest.raises(RuntimeError, match="only configures and aggregates"):
        edge.send_and_receive([message])


# --- simulation through Flower's public run_simulation --------------------------------------------


def test_flowers_public_run_simulation_takes_what_we_pass() -> None:
    parameters = inspect.signature(flwr.simulation.run_simulation).parameters

    assert {"server_app", "client_app", "num_supernodes", "backend_config",
            "verbose_logging"} <= set(parameters)


def test_the_run_config_mod_gives_every_call_the_run_config() -> None:
    app = ClientApp(mods=[RunConfigMod({"config-json": "{}", "k": "v"})])

    @app.query("echo")
    def echo(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"seen": ConfigRecord(dict(context.run_config))}),
                       reply_to=msg)

    grid = LocalGrid(app, 2, run_config={"own": 1})
    [reply] = grid.send_and_receive([Message(RecordDict(), dst_node_id=1001,
                                             message_type="query.echo")])

    assert dict(reply.content.config_records["seen"]) == {"config-json": "{}", "k": "v"}
    # Flower's simulation refuses to store a context whose run_config changed: it is put back.
    assert grid.contexts[1001].run_config == {"own": 1}


def test_the_simulation_apps_run_a_config_without_a_run_config(tmp_path: Path) -> None:
    # Flower's public run_simulation gives both apps an empty run_config: the apps built around
    # the config must run it all the same.
    config = resolve(None, {"method": "hierfavg", "profile": "smoke", "out": str(tmp_path)})
    server_app, client_app = simulation_apps(config)
    grid = LocalGrid(client_app, config.topology.num_devices, run_config={})

    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                             run_config={}))

    summary = json.loads((tmp_path / "results.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all(r["devices"]["failures"] == 0 for r in summary["rounds"])

