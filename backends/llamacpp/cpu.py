"""Which of ggml's CPU variants to build for this machine, and whether the OS lets a process use AMX.

llama.cpp's release builds compile the CPU backend several times (``GGML_CPU_ALL_VARIANTS``), once per
instruction-set level, and pick one at run time by a score computed from ``cpuid``. That score does not
check what the operating system enables ("FIXME: this does not check for OS support" in
``ggml-cpu/arch/x86/cpu-feats.cpp``): on a virtual machine that advertises AMX but faults on its tile
instructions, the ``sapphirerapids`` variant wins and dies with SIGILL. So servebench builds a few variants
(the portable baseline, the common AVX2 level, and the best one this CPU advertises), asks the kernel for
AMX before building the AMX variant, and the build's smoke run removes any variant that still faults.

The table mirrors ``ggml/src/CMakeLists.txt`` (x86) and the score mirrors ``ggml_backend_cpu_x86_score``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Sequence
from types import MappingProxyType

from backends.hostcpu import cpu_flags, is_x86

# ggml's x86 variants in the order its CMakeLists declares them, with the features each requires.
X86_VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("x64", ()),
    ("sse42", ("SSE42",)),
    ("sandybridge", ("SSE42", "AVX")),
    ("ivybridge", ("SSE42", "AVX", "F16C")),
    ("piledriver", ("SSE42", "AVX", "F16C", "FMA")),
    ("haswell", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2")),
    ("skylakex", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512")),
    ("cannonlake", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI")),
    ("cascadelake", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI")),
    ("icelake", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI")),
    ("cooperlake", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16")),
    ("zen4", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
              "AVX512_BF16")),
    ("alderlake", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI")),
    ("sapphirerapids", ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
                        "AVX512_BF16", "AMX_TILE", "AMX_INT8")),
)
BASELINE = "x64"  # runs on every x86-64 CPU: the variant of last resort
COMMON = "haswell"  # AVX2: the level almost every server CPU since 2013 has, the fallback below a wide variant
AMX_VARIANT = "sapphirerapids"

# /proc/cpuinfo flags behind each ggml feature (AVX512 means the F, CD, VL, DQ and BW subsets, as ggml checks).
_CPUINFO_FLAGS = MappingProxyType({
    "SSE42": ("sse4_2",), "AVX": ("avx",), "F16C": ("f16c",), "FMA": ("fma",), "AVX2": ("avx2",),
    "BMI2": ("bmi2",), "AVX_VNNI": ("avx_vnni",),
    "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "AVX512_VBMI": ("avx512vbmi",), "AVX512_VNNI": ("avx512_vnni",), "AVX512_BF16": ("avx512_bf16",),
    "AMX_TILE": ("amx_tile",), "AMX_INT8": ("amx_int8",),
})
# The bit each feature adds to ggml's score (AMX_TILE adds none; AMX_INT8 does).
_SCORE_BITS = MappingProxyType({
    "FMA": 0, "F16C": 1, "SSE42": 2, "BMI2": 3, "AVX": 4, "AVX2": 5, "AVX_VNNI": 6, "AVX512": 7,
    "AVX512_VBMI": 8, "AVX512_BF16": 9, "AVX512_VNNI": 10, "AMX_INT8": 11,
})

# Linux's arch_prctl request that grants a process the AMX tile state (asm/prctl.h, asm/fpu/xstate.h).
_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

VARIANTS_ENV = "SERVEBENCH_LLAMACPP_CPU_VARIANTS"


def has_features(features: Iterable[str], flags: frozenset[str]) -> bool:
    """Whether ``flags`` (from /proc/cpuinfo) cover every ggml feature in ``features``."""
    return all(flag in flags for feature in features for flag in _CPUINFO_FLAGS[feature])


def score(features: Sequence[str], flags: frozenset[str]) -> int:
    """ggml's score of a variant on a CPU with ``flags``: 0 when it cannot run there, higher is wider."""
    if not has_features(features, flags):
        return 0
    return 1 + sum(1 << _SCORE_BITS[f] for f in features if f in _SCORE_BITS)


def best_variant(names: Iterable[str], flags: frozenset[str]) -> str | None:
    """The variant among ``names`` that ggml's score picks on a CPU with ``flags`` (None if none runs)."""
    features = dict(X86_VARIANTS)
    scored = [(score(features[name], flags), name) for name in names if name in features]
    best = max(scored, default=(0, None))
    return best[1] if best[0] else None


def amx_granted() -> bool:
    """Whether the kernel grants this process the AMX tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``).

    A CPU can advertise AMX in ``cpuid`` while the kernel or hypervisor does not enable it; tile
    instructions then fault. The request is harmless where it succeeds and fails cleanly where it does not.
    """
    if not is_x86() or not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)) == 0


def choose_variants(flags: frozenset[str], amx: bool) -> list[str]:
    """The variants to build for a CPU with ``flags``: baseline, AVX2, the widest it runs, AMX if granted.

    The baseline and AVX2 variants are the fallbacks the smoke run falls back to when a wider variant
    faults; the widest non-AMX variant is what this CPU runs at full speed; the AMX variant is built only
    where the CPU advertises AMX and the kernel grants it.
    """
    chosen = [BASELINE]
    features = dict(X86_VARIANTS)
    if score(features[COMMON], flags):
        chosen.append(COMMON)
    wide = [(score(feats, flags), name) for name, feats in X86_VARIANTS if name != AMX_VARIANT]
    best = max(wide)
    if best[0] and best[1] not in chosen:
        chosen.append(best[1])
    if amx and score(features[AMX_VARIANT], flags):
        chosen.append(AMX_VARIANT)
    return chosen


def variants_for_this_machine(environ: dict[str, str] | None = None) -> list[str] | None:
    """The variants to build here; ``None`` means every variant (non-x86, or ``$SERVEBENCH_LLAMACPP_CPU_VARIANTS=all``).

    ``$SERVEBENCH_LLAMACPP_CPU_VARIANTS`` takes ``all`` (a build to copy to other machines) or a
    comma-separated list of variant names.
    """
    env = os.environ if environ is None else environ
    wanted = env.get(VARIANTS_ENV, "").strip()
    if not is_x86() or wanted == "all":
        return None
    if wanted:
        names = [name.strip() for name in wanted.split(",") if name.strip()]
        unknown = sorted(set(names) - {name for name, _ in X86_VARIANTS})
        if unknown:
            known = ", ".join(name for name, _ in X86_VARIANTS)
            raise ValueError(f"${VARIANTS_ENV}: unknown CPU variant(s) {', '.join(unknown)}; known: all, {known}")
        return names if BASELINE in names else [BASELINE, *names]
    return choose_variants(cpu_flags(), amx_granted())
