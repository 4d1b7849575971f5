"""Tasks: records of prediction jobs (TaskStore on Redis or memory), the async queue and its workers, webhooks.

`system.open_tasks` builds the parts from the settings; `manager` and
`predictions` are the cores behind TaskService and PredictAsync; `worker` runs
queued tasks; `webhooks` delivers finished ones.
"""
