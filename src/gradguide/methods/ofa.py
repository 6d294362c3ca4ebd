"""OFA as a method: LayerNorm tuning with the OFA penalties switched on by default.

What is trained and saved is exactly what ``layernorm`` trains (every normalisation gain and bias,
in place, saved as tensors); the difference is ``default_guidance = "ofa"``, so a run that names no
guidance adds the step-ratio and sharpness terms of gradguide.guidance.ofa to cross entropy.
``--method layernorm --guidance ofa-step`` (or ``ofa-sharp``) gives the paper's ablations.
"""

from __future__ import annotations

from gradguide.methods.layernorm import LayerNormTuning


class OfaTuning(LayerNormTuning):
    """Normalisation-only training whose runs add the OFA terms unless guidance is named."""

    name = "ofa"
    default_guidance = "ofa"
    role = "proposed"
    #: after the sgg arms, before spectral (gradguide.report.analysis.GUIDANCE_ARM_RANKS)
    report_rank = 110
    description = "OFA: LayerNorm tuning + step-ratio and sharpness penalties (guidance ofa)"
