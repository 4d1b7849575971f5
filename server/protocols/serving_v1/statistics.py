"""GetModelStatistics: each served version's counts and durations, as its Batcher counted them
(`server.batching.BatchStats`; the same counters as Triton's ModelStatistics in inference_v2)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from server.models.model import LoadedModel
from serving.v1 import model_pb2


def statistics_of(model: LoadedModel) -> model_pb2.ModelStatistics:
    stats = model.batcher.stats
    last = None
    if stats.last_batch_at:
        last = Timestamp()
        last.FromNanoseconds(round(stats.last_batch_at * 1e9))
    durations = stats.durations()
    return model_pb2.ModelStatistics(
        name=model.name,
        version=model.version,
        last_inference_time=last,
        inference_count=stats.rows,
        execution_count=stats.batches,
        **{name: model_pb2.StatisticDuration(count=count, total_ns=ns) for name, (count, ns) in durations.items()},
        batches=[
            model_pb2.BatchStatistics(
                batch_size=size,
                count=count,
                compute_input_ns=input_ns,
                compute_infer_ns=infer_ns,
                compute_output_ns=output_ns,
            )
            for size, count, input_ns, infer_ns, output_ns in stats.per_batch_size()
        ],
    )
