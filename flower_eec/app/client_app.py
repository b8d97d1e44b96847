"""The flower-eec ClientApp: one handler per message type, each delegating to ``clients``."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flower_eec import clients
from flower_eec.clients import eclm, fedagg

app = ClientApp()


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which device this node is."""
    return clients.describe(msg, context)


@app.query("embed")
def embed(msg: Message, context: Context) -> Message:
    """FedAgg: send the bridge codes of the device's training images."""
    return fedagg.embed(msg, context)


@app.query("route")
def route(msg: Message, context: Context) -> Message:
    """ECLM: report module use on the current data and the resource budget."""
    return eclm.route(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally: from received weights, from a teacher's logits (FedAgg), or adapt a
    received sub-model (ECLM)."""
    if fedagg.TEACHER in msg.content.array_records:
        return fedagg.train(msg, context)
    if eclm.is_eclm(msg):
        return eclm.train(msg, context)
    return clients.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received weights, or the model the device keeps, on its local test split."""
    return clients.evaluate_local(msg, context)
