"""The VLM arm: backends, prompts, parsing, slice inference, majority vote and consistency.

Modules (heavy libraries are imported only inside the functions that need them):

- :mod:`~GliomaCompareLib.vlm.tasks`: the four tasks' prompt templates and answer definitions
  (data in ``Resources/prompts/``).
- :mod:`~GliomaCompareLib.vlm.parsing`: one parser for every backend, with answer statuses.
- :mod:`~GliomaCompareLib.vlm.types`: the backend protocol, query / answer / decoding types.
- :mod:`~GliomaCompareLib.vlm.backends`: :func:`make_backend`, the backend factory.
- :mod:`~GliomaCompareLib.vlm.hf_backend`: the ``transformers`` and ``tiny`` backends, model and
  adapter loading.
- :mod:`~GliomaCompareLib.vlm.openai_backend`: OpenAI-compatible servers.
- :mod:`~GliomaCompareLib.vlm.tiny`: the tiny random-weight Llama 3.2 Vision built in code.
- :mod:`~GliomaCompareLib.vlm.cache`: the content-addressed answer cache.
- :mod:`~GliomaCompareLib.vlm.scoring`: slice scores and the patient grade vote.
- :mod:`~GliomaCompareLib.vlm.inference`: :func:`run_vlm`, the whole arm's inference.
- :mod:`~GliomaCompareLib.vlm.finetune` (with ``finetune_data``, ``finetune_eval``): LoRA /
  QLoRA fine-tuning, :func:`finetune`.
"""

from GliomaCompareLib.vlm.backends import BackendSettings, make_backend
from GliomaCompareLib.vlm.cache import AnswerCache, answer_key
from GliomaCompareLib.vlm.finetune import (
    FinetuneConfig,
    FinetuneEpoch,
    FinetuneProgress,
    FinetuneResult,
    finetune,
)
from GliomaCompareLib.vlm.inference import (
    PatientRecord,
    ProgressEvent,
    SliceRecord,
    VLMConfig,
    VLMResult,
    run_vlm,
)
from GliomaCompareLib.vlm.parsing import PARSE_STATUSES, ParsedAnswer, parse_answer
from GliomaCompareLib.vlm.scoring import TIE_RULES, GradeVote, majority_vote, score_slice
from GliomaCompareLib.vlm.tasks import TASK_NAMES, Prompt, TaskSpec, load_tasks, parse_task_list
from GliomaCompareLib.vlm.tiny import TINY_MODEL_LABEL
from GliomaCompareLib.vlm.types import (
    BACKEND_NAMES,
    DEFAULT_MODEL_ID,
    Answer,
    DecodingConfig,
    Query,
    VLMBackend,
    build_messages,
)

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_MODEL_ID",
    "PARSE_STATUSES",
    "TASK_NAMES",
    "TIE_RULES",
    "TINY_MODEL_LABEL",
    "Answer",
    "AnswerCache",
    "BackendSettings",
    "DecodingConfig",
    "FinetuneConfig",
    "FinetuneEpoch",
    "FinetuneProgress",
    "FinetuneResult",
    "GradeVote",
    "ParsedAnswer",
    "PatientRecord",
    "ProgressEvent",
    "Prompt",
    "Query",
    "SliceRecord",
    "TaskSpec",
    "VLMBackend",
    "VLMConfig",
    "VLMResult",
    "answer_key",
    "build_messages",
    "finetune",
    "load_tasks",
    "majority_vote",
    "make_backend",
    "parse_answer",
    "parse_task_list",
    "run_vlm",
    "score_slice",
]
