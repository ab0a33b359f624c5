"""Views: ipywidgets front ends over the core. They only show what the core computes."""
from __future__ import annotations

from .controls import SamplerPicker
from .schedules import ScheduleExplorer
from .studio import Studio
from .viewer import StepViewer

__all__ = ["SamplerPicker", "ScheduleExplorer", "StepViewer", "Studio"]
