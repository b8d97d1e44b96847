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

USAGE = "usage"  # ECLM: module-use histogram (ArrayRecord of a route reply, metric of train)

# --- keys of a describe reply ----------------------------------------------------------------
PARTITION_ID = "partition-id"
NUM_TRAIN = "num-train"
NUM_TEST = "num-test"
MODEL = "model"
HANDLERS = "handlers"  # the message types this ClientApp answers (list of str)
SERVER_ROUND = "server-round"
CHECKPOINT_DIR = "checkpoint-dir"  # node config: the folder where a device keeps past models
NUM_EXAMPLES = "num-examples"
EVAL_BATCH_SIZE = "eval-batch-size"  # images per no-grad forward pass (evaluating, routing)
ADAPT_EPOCHS = "adapt-epochs"  # evaluate: train a copy this many epochs on the current
# local data first (WeightsDevice; 0: evaluate as received)

# --- FedIN/HeteroAvg knobs (``config`` record of train.fedin; source: FedIN's constructor) ---
MU = "mu"  # weight of the IN-alignment gradient in the conflict QP's target
SEND_FEATURES = "send-features"  # bool: reply with one batch of own features (FedIN, not HeteroAvg)
FEATURE_BATCH = "feature-batch"  # samples per feature batch (int)
FEATURE_FP16 = "feature-fp16"  # bool: feature batches travel as float16
FEATURE_IN_SHAPE = "feature-in-shape"  # per-sample shape of s_in = E(x) (list of int)
FEATURE_OUT_SHAPE = "feature-out-shape"  # per-sample shape of s_out = IN(s_in) (list of int)
MAX_FEATURE_BYTES = "max-feature-bytes"  # largest feature record accepted (int)

# --- FedAgg/FedEEC knobs (``config`` record of query.embed, train.distil, evaluate.kept;
# source: FedAgg's constructor) and the query.embed reply's ``config`` record --------------------
TEMPERATURE = "T"  # distillation temperature
BETA_LEAF = "beta-leaf"  # weight of the device's KD term
GAMMA = "gamma"  # weight of the device's CE on its real images
CLIP = "clip"  # largest gradient norm of a device step (0: unclipped)
FP16 = "fp16"  # bool: codes and logits travel as float16
FIDELITY = "fidelity"  # bool: the official demo's train-mode BatchNorm, raw samples, fixed order
SKR = "skr"  # bool: the device distils towards FedEEC's rectified target
SKR_SELF_KNOWLEDGE = "skr-self-knowledge"  # bool: SKR's self-knowledge rule
SKR_SWAP = "skr-swap"  # bool: SKR's swap rule
LOGITS_BATCH = "logits-batch"  # samples per no-grad pass of the device's logits
NUM_CLASSES = "num-classes"  # outputs of the model's head (FedAgg: logits per bridge sample; ECLM)
BRIDGE_DIGEST = "bridge-digest"  # the server's bridge (weights digest): the device's must match
KEPT_ROUND = "kept-round"  # train.distil/evaluate.kept: the round of the kept model to use (0:
# a fresh one); in the reply's ``kept`` record: the round of the model the device really used
STATE_ROUND = "state-round"  # in the ``kept`` record: the round of the model the device's
# state held when the message came (another than KEPT_ROUND: it was restored from disk)
KEPT = "kept"  # the reply record (ConfigRecord) that holds KEPT_ROUND and STATE_ROUND
KEEP_FROM = "keep-from"  # train.distil: kept models of earlier rounds may be dropped from disk
DATA_MEAN = "mean"  # query.embed reply: the per-channel mean of the device's data
DATA_STD = "std"  # query.embed reply: the per-channel std of the device's data

# --- ECLM knobs (``config`` record of query.route and train.adapt; source: ECLM's constructor;
# NUM_CLASSES above is the modular model's head) -------------------------------------------------
IN_CHANNELS = "in-channels"  # channels of the input images
LAYERS = "layers"  # module layers L of the modular model
MODULES = "modules"  # modules per layer M of the full model
TOP_K = "top-k"  # modules each sample runs per layer (1 or 2)
CHANNELS = "channels"  # channels of the stem and of layer 0
SELECTOR_NORM = "selector-norm"  # bool: the selector standardises its input
# --- ECLM query.route reply metrics ---
BUDGET = "budget"  # the device's largest sub-model now, in parameters (int)
DATA_VERSION = "data-version"  # checksum of the device's current training data (int)


def layer_key(layer: int) -> str:
    """ECLM: the train.adapt ``config`` key listing the sub-model's modules of ``layer``."""
    return f"layer-{layer}"
