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
    durations = {name: pb.StatisticDuration(count=count, ns=ns) for name, (count, ns) in stats.durations().items()}
    return pb.ModelStatistics(
        name=model.name,
        version=str(model.version),
        last_inference=round(stats.last_batch_at * 1000),
        inference_count=stats.rows,
        execution_count=stats.batches,
        inference_stats=pb.InferStatistics(**durations),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=pb.StatisticDuration(count=count, ns=input_ns),
                compute_infer=pb.StatisticDuration(count=count, ns=infer_ns),
                compute_output=pb.StatisticDuration(count=count, ns=output_ns),
            )
            for size, count, input_ns, infer_ns, output_ns in stats.per_batch_size()
        ],
    )
