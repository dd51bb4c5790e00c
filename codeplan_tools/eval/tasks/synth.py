"""Register the synthetic tasks of ``codeplan synth`` (``codeplan_tools.stages.synth``) with the task registry.

Each maps to an existing scorer family; accuracy is reported per ``difficulty`` (the records' k).
Synth prompts carry no answer-format instruction: the worked responses (and a model trained on them)
end with "The answer is X.", which every family's strict extraction reads.
"""

from __future__ import annotations

from codeplan_tools.stages.synth import TASKS

from . import Task, field_subtasks, register_task

# Free-form exact answers need a normalisation that forgives spacing the way the gold allows it.
SCORER_OPTIONS = {
    "last_letter": {"normalize": "compact"},  # "e a y" = "eay"
    "sort": {"normalize": "words"},  # "2, 5, 9" = "2 5 9"
}

for _name, _spec in TASKS.items():
    register_task(
        Task(
            name=f"synth/{_name}",
            scorer=_spec.scorer,
            scorer_options=SCORER_OPTIONS.get(_name, {}),
            subtasks=field_subtasks("difficulty"),
            difficulty="difficulty",
            group="synth",
            description=f"{_spec.description} Difficulty k = {_spec.k_means}. Made by 'codeplan synth'.",
        )
    )
