"""plain-lora ClientApp: rebuild the model for every message, load the global weights, train or evaluate."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from plain_lora.task import get_model, get_weights, load_data, set_weights
from plain_lora.task import test as test_fn
from plain_lora.task import train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the model on local data."""
    model, info = get_model(str(context.run_config["scenario"]))
    set_weights(model, msg.content["arrays"].to_torch_state_dict())
    partition_id = int(context.node_config["partition-id"])
    texts, labels = load_data(info, "train", partition_id)
    seed = 1000 * int(msg.content["config"]["server-round"]) + partition_id
    torch.manual_seed(seed)
    loss = train_fn(model, texts, labels, info, seed)
    content = RecordDict(
        {
            "arrays": ArrayRecord(get_weights(model)),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(texts)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on local data."""
    model, info = get_model(str(context.run_config["scenario"]))
    set_weights(model, msg.content["arrays"].to_torch_state_dict())
    texts, labels = load_data(info, "test", int(context.node_config["partition-id"]))
    loss, accuracy = test_fn(model, texts, labels, info)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(texts)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
