"""Triton's statistics extension (ModelStatistics, `GET /v2/models[/{model}[/versions/{v}]]/stats`).

Counted by each version's Batcher since the version loaded (`server.batching.BatchStats`): requests
answered and failed, their time in the queue, and the three phases of each model call (merging
the inputs, the call, splitting the outputs), summed per request as Triton sums them, and per
batch size. Requests refused before the Batcher (bad input, a full queue) are not counted here;
the Prometheus metrics count them.
"""

from __future__ import annotations

from inference import open_inference_pb2 as pb
from server.models.model import LoadedModel


def statistics_of(model: LoadedModel) -> pb.ModelStatistics:
    stats = model.batcher.stats
    duration = pb.StatisticDuration
    return pb.ModelStatistics(
        name=model.name,
        version=str(model.version),
        last_inference=round(stats.last_batch_at * 1000),
        inference_count=stats.rows,
        execution_count=stats.batches,
        inference_stats=pb.InferStatistics(
            success=duration(count=stats.succeeded, ns=stats.succeeded_ns),
            fail=duration(count=stats.failed + stats.expired, ns=stats.failed_ns),
            queue=duration(count=stats.succeeded, ns=stats.queue_ns),
            compute_input=duration(count=stats.succeeded, ns=stats.input_ns),
            compute_infer=duration(count=stats.succeeded, ns=stats.infer_ns),
            compute_output=duration(count=stats.succeeded, ns=stats.output_ns),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=duration(count=count, ns=input_ns),
                compute_infer=duration(count=count, ns=infer_ns),
                compute_output=duration(count=count, ns=output_ns),
            )
            for size, (count, input_ns, infer_ns, output_ns) in sorted(dict(stats.batch_ns).items())
        ],
    )
