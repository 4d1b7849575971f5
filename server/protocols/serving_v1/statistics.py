"""GetModelStatistics: each served version's counts and durations, as its Batcher counted them
(`server.batching.BatchStats`; the same counters as Triton's ModelStatistics in inference_v2)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from server.models.model import LoadedModel
from serving.v1 import model_pb2


def statistics_of(model: LoadedModel) -> model_pb2.ModelStatistics:
    stats = model.batcher.stats
    duration = model_pb2.StatisticDuration
    last = None
    if stats.last_batch_at:
        last = Timestamp()
        last.FromNanoseconds(round(stats.last_batch_at * 1e9))
    return model_pb2.ModelStatistics(
        name=model.name,
        version=model.version,
        last_inference_time=last,
        inference_count=stats.rows,
        execution_count=stats.batches,
        success=duration(count=stats.succeeded, total_ns=stats.succeeded_ns),
        fail=duration(count=stats.failed + stats.expired, total_ns=stats.failed_ns),
        queue=duration(count=stats.succeeded, total_ns=stats.queue_ns),
        compute_input=duration(count=stats.succeeded, total_ns=stats.input_ns),
        compute_infer=duration(count=stats.succeeded, total_ns=stats.infer_ns),
        compute_output=duration(count=stats.succeeded, total_ns=stats.output_ns),
        batches=[
            model_pb2.BatchStatistics(
                batch_size=size,
                count=count,
                compute_input_ns=input_ns,
                compute_infer_ns=infer_ns,
                compute_output_ns=output_ns,
            )
            for size, (count, input_ns, infer_ns, output_ns) in sorted(dict(stats.batch_ns).items())
        ],
    )
