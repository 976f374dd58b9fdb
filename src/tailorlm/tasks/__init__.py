"""Tasks: data splits, an instruction, an answer form and a metric (task.py); metrics, parsing and the code sandbox."""

from tailorlm.tasks.task import ANSWER_FORMS, Task, TaskExample, load_task, task_from_dict

__all__ = ["ANSWER_FORMS", "Task", "TaskExample", "load_task", "task_from_dict"]
