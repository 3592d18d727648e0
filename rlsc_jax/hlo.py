"""Matmul FLOPs and collective bytes of a compiled (SPMD-partitioned) XLA program, read from its HLO text.

XLA's `cost_analysis()` counts a while loop's body once, so a `lax.scan` over 28 layers looks 28 times
cheaper than it is. Here each computation's totals are summed through the call graph, a while body
multiplied by its `known_trip_count`. A loop whose trip count is not known (the sampler's decode loop,
which stops at EOS) counts once and is also reported on its own: its body is the cost of one iteration.
Shapes in a partitioned module are per device, so every figure is per device.
"""

from __future__ import annotations

import dataclasses
import math
import re

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \((.*)\) -> .* \{$")
_PARAM = re.compile(r"([\w.\-]+): (\w+\[[^\]]*\])")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\([^()]*\)|\w+\[[^\]]*\])(?:\{[^}]*\})? ([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"(\w+)\[([^\]]*)\]")
_CALLS = re.compile(r"(?:calls|body|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


@dataclasses.dataclass
class Totals:
    """Matmul FLOPs and bytes moved by each kind of collective."""

    flops: float = 0.0
    collective_bytes: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(COLLECTIVES, 0.0))

    def add(self, other: "Totals", times: float = 1.0) -> None:
        self.flops += times * other.flops
        for kind, n in other.collective_bytes.items():
            self.collective_bytes[kind] += times * n

    def as_dict(self) -> dict:
        return {"flops": self.flops, "collective_bytes": dict(self.collective_bytes),
                "collective_bytes_total": sum(self.collective_bytes.values())}


def _dims(shape: str) -> list[int]:
    """[8,96,16] of 'f32[8,96,16]' (an array shape)."""
    inner = _ARRAY.match(shape).group(2)
    return [int(d) for d in inner.split(",") if d]


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO array or tuple shape such as 'f32[8,96]' or '(f32[2], bf16[4,4])'."""
    return sum(_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
               for dtype, dims in _ARRAY.findall(shape))


@dataclasses.dataclass
class _Computation:
    own: Totals
    calls: list[tuple[str, float, bool]]  # (callee, times, trip count known)


def _parse(text: str) -> tuple[dict[str, _Computation], str]:
    """Every computation's own totals and the computations it calls; and the entry computation's name."""
    comps: dict[str, _Computation] = {}
    entry, current, shapes = "", None, {}
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = _Computation(Totals(), [])
            comps[header.group(1)] = current
            shapes = dict(_PARAM.findall(header.group(2)))
            if line.startswith("ENTRY"):
                entry = header.group(1)
            continue
        instr = _INSTR.match(line) if current is not None else None
        if not instr:
            continue
        name, shape, opcode, rest = instr.groups()
        shapes[name] = shape
        if opcode == "dot":
            lhs = re.match(r"%([\w.\-]+)", rest).group(1)
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest).group(1)
            lhs_dims = _dims(shapes[lhs])
            k = math.prod(lhs_dims[int(i)] for i in contracting.split(",") if i)
            current.own.flops += 2.0 * math.prod(_dims(shape)) * k
        elif opcode.removesuffix("-start") in COLLECTIVES:
            current.own.collective_bytes[opcode.removesuffix("-start")] += shape_bytes(shape)
        trip = _TRIP.search(rest)
        times = float(trip.group(1)) if opcode == "while" and trip else 1.0
        known = opcode != "while" or trip is not None
        callees = _CALLS.findall(rest)
        for branches in _BRANCHES.findall(rest):
            callees += [b.strip().lstrip("%") for b in branches.split(",") if b.strip()]
        current.calls += [(callee, times, known) for callee in callees]
    return comps, entry


def analyze(text: str) -> tuple[Totals, list[Totals]]:
    """(totals of the whole program, totals of one iteration of each loop whose trip count is unknown)."""
    comps, entry = _parse(text)
    memo: dict[str, Totals] = {}
    unknown: list[Totals] = []

    def total(name: str) -> Totals:
        if name not in memo:
            comp = comps.get(name)
            out = Totals()
            if comp is not None:
                out.add(comp.own)
                for callee, times, known in comp.calls:
                    sub = total(callee)
                    out.add(sub, times)
                    if not known:
                        unknown.append(sub)
            memo[name] = out
        return memo[name]

    return total(entry), unknown
