"""Input files to Records: which files (paths), how prompts are built (template), reading them."""

from hpcinfer.inputs.paths import INPUT_EXTENSIONS, display_name, expand_inputs
from hpcinfer.inputs.readers import FORMATS, detect_format, read_records
from hpcinfer.inputs.template import PromptTemplate, TemplateFieldError, TemplateRenderError

__all__ = [
    "FORMATS",
    "INPUT_EXTENSIONS",
    "PromptTemplate",
    "TemplateFieldError",
    "TemplateRenderError",
    "detect_format",
    "display_name",
    "expand_inputs",
    "read_records",
]
