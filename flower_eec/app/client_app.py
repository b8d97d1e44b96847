"""The flower-eec ClientApp: one handler per message type, each delegating to ``clients``."""

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flower_eec import clients
from flower_eec.clients import eclm, fedagg, fedin
from flower_eec.clients.device import device_setup

app = ClientApp()

Handler = Callable[[Message, Context], Message]
# Methods whose devices do more than local CE on received weights have their own handlers.
TRAIN: dict[str, Handler] = {"fedin": fedin.train, "heteroavg": fedin.train,
                             "fedagg": fedagg.train, "fedeec": fedagg.train, "eclm": eclm.train}
EVALUATE: dict[str, Handler] = {"fedin": fedin.evaluate_local, "heteroavg": fedin.evaluate_local}


def _method(context: Context) -> str:
    return device_setup(context)[0].method


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
    """Train locally from the received weights, or do the method's own device step (FedAgg:
    learn from the edge's logits; ECLM: adapt the received sub-model; FedIN: IN training)."""
    return TRAIN.get(_method(context), clients.train)(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received weights, or the model the device keeps, on its local test split."""
    return EVALUATE.get(_method(context), clients.evaluate_local)(msg, context)
