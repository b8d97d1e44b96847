"""The flower-eec ClientApp: one handler per message type, each delegating to ``clients``."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flower_eec import clients
from flower_eec.clients import eclm

app = ClientApp()


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which device this node is."""
    return clients.describe(msg, context)


@app.query("route")
def route(msg: Message, context: Context) -> Message:
    """ECLM: report module use on the current data and the resource budget."""
    return eclm.route(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally from the received weights (ECLM: adapt the received sub-model)."""
    if eclm.is_eclm(msg):
        return eclm.train(msg, context)
    return clients.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received weights on the local test split."""
    return clients.evaluate_local(msg, context)
