"""Message types and record names that strategies and devices share: one place, one spelling.

Flower routes a message by its type: ``train``, ``evaluate`` and ``query`` are categories,
``<category>.<action>`` picks a handler registered with ``@app.train("<action>")``.
"""

from __future__ import annotations

# --- message types ---------------------------------------------------------------------------
DESCRIBE = "query.describe"  # every device: who it is (partition id, data sizes, model, handlers)
TRAIN = "train"  # plain training from the received weights (FedAvg, HierFAVG: any ClientApp)
EVALUATE = "evaluate"  # evaluation of the received weights on the local test split
EMBED = "query.embed"  # FedAgg/FedEEC: bridge codes and labels of the training images (once)
DISTIL = "train.distil"  # FedAgg/FedEEC: learn from the parent's logits, answer with own logits
EVALUATE_KEPT = "evaluate.kept"  # FedAgg/FedEEC: evaluate the model the device keeps
FEDIN_TRAIN = "train.fedin"  # FedIN/HeteroAvg: train the received depth's model (IN alignment)
FEDIN_EVALUATE = "evaluate.fedin"  # FedIN/HeteroAvg: evaluate the received depth's model
ROUTE = "query.route"  # ECLM: module use of the cloud's selector on the local data, and budget
ADAPT = "train.adapt"  # ECLM: adapt the received sub-model locally, return its modules

# --- records ---------------------------------------------------------------------------------
CONFIG = "config"  # ConfigRecord of every message: the method's knobs and ``server-round``
METRICS = "metrics"  # MetricRecord of every reply
ARRAYS = "arrays"  # ArrayRecord of weights (either direction)
DESCRIPTION = "describe"  # ConfigRecord of a describe reply
TEACHER = "teacher"  # FedAgg train message: the parent's logits on the device's bridge samples
LOGITS = "logits"  # FedAgg train reply: the device's own logits on the same samples
EMBEDDINGS = "embeddings"  # query.embed reply: codes and labels
FEATURES = "features"  # FedIN: one feature batch (s_in, s_out), down and up
SUBMODEL = "eclm"  # ECLM train message: ConfigRecord naming the sub-model's modules per layer
USAGE = "usage"  # ECLM: module-use histogram (ArrayRecord of a route reply, metric of train)

# --- keys of a describe reply ----------------------------------------------------------------
PARTITION_ID = "partition-id"
NUM_TRAIN = "num-train"
NUM_TEST = "num-test"
MODEL = "model"
HANDLERS = "handlers"  # the message types this ClientApp answers (list of str)
SERVER_ROUND = "server-round"
NUM_EXAMPLES = "num-examples"
