"""Progressive Layered Extraction (Tang et al., RecSys 2020): stacked Customized Gate Control.

Every level has ``num_task_experts`` experts per task and ``num_shared_experts`` shared experts.
Task ``k``'s gate mixes its own experts and the shared ones; a shared gate mixes all experts of
the level and feeds the shared experts of the next level. The last level has no shared gate.
Level 1 experts all read ``x``; at level ``l + 1`` task ``k``'s experts read task ``k``'s level-``l``
output and the shared experts read the shared output.

All experts of a level are one :class:`BatchedExperts` (one matmul per layer): at level 1 they
share the input, later each expert gets its group's input stacked along the expert dimension.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from mtl_torchrec.modules.experts import BatchedExperts, ExpertTrace, GateInfo, mix_experts
from mtl_torchrec.modules.mlp import MLPOptions


class CGCLevel(nn.Module):
    """One Customized Gate Control level.

    Args:
        in_features: width of every input of the level.
        num_tasks: number of tasks.
        num_task_experts: experts owned by each task.
        num_shared_experts: experts shared by all tasks.
        expert_layers: layer sizes of each expert MLP.
        shared_gate: whether to compute the shared gate (all levels but the last).
        level: index of the level, used in expert names.
        expert_options: activation, norm and dropout of the expert layers (default ReLU).

    Example::

        level = CGCLevel(32, num_tasks=2, num_task_experts=1, num_shared_experts=2,
                         expert_layers=[16], shared_gate=True)
        trace = level([torch.randn(8, 32)] * 3)     # 2 task inputs + the shared input
        len(trace.outputs)                          # 3: one per task, then the shared output
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_task_experts: int,
        num_shared_experts: int,
        expert_layers: List[int],
        shared_gate: bool,
        level: int = 0,
        expert_options: Optional[MLPOptions] = None,
    ) -> None:
        super().__init__()
        if num_task_experts < 0 or num_shared_experts < 0 or num_task_experts + num_shared_experts == 0:
            raise ValueError("PLE needs num_task_experts >= 0, num_shared_experts >= 0 and at least one expert per gate")
        self.num_tasks = num_tasks
        self.num_task_experts = num_task_experts
        self.num_shared_experts = num_shared_experts
        self.has_shared_gate = shared_gate
        self.level = level
        self.out_features = expert_layers[-1]
        n_task = num_tasks * num_task_experts
        self.num_experts = n_task + num_shared_experts
        self.experts = BatchedExperts(in_features, self.num_experts, expert_layers, expert_options)
        # Expert order in the bank: task 0's experts, task 1's, ..., then the shared ones.
        shared_idx = list(range(n_task, self.num_experts))
        self._gate_index: List[List[int]] = [
            list(range(k * num_task_experts, (k + 1) * num_task_experts)) + shared_idx for k in range(num_tasks)
        ]
        if shared_gate:
            self._gate_index.append(list(range(self.num_experts)))
        # Every gate's expert indices, concatenated (gate i: [offsets[i], offsets[i + 1])): one buffer
        # and a list of ints rather than a buffer per gate, which TorchScript cannot look up by name.
        self.register_buffer("gate_index", torch.tensor([j for idx in self._gate_index for j in idx], dtype=torch.long),
                             persistent=False)
        self.gate_offsets: List[int] = [0]
        for idx in self._gate_index:
            self.gate_offsets.append(self.gate_offsets[-1] + len(idx))
        self.gates = nn.ModuleList(nn.Linear(in_features, len(idx)) for idx in self._gate_index)
        # Which group's input each expert reads (task k -> k, shared -> num_tasks), for levels > 1.
        group = [k for k in range(num_tasks) for _ in range(num_task_experts)] + [num_tasks] * num_shared_experts
        self.register_buffer("expert_group", torch.tensor(group, dtype=torch.long), persistent=False)
        names = [f"level{level}/task{k}/expert{j}" for k in range(num_tasks) for j in range(num_task_experts)]
        names += [f"level{level}/shared/expert{j}" for j in range(num_shared_experts)]
        self.expert_names = names

    @torch.jit.ignore
    def forward(self, inputs: List[torch.Tensor], same_input: bool = False) -> ExpertTrace:
        """Same as :meth:`forward_with_experts` (inputs ``[B, in_features]`` each, outputs ``[B, out_features]``)."""
        return self.forward_with_experts(inputs, same_input)

    def mix(self, inputs: List[torch.Tensor], same_input: bool = False) -> Tuple[List[torch.Tensor], List[torch.Tensor], torch.Tensor]:
        """The level's computation: ``(outputs, gate weights, expert outputs [E, B, out])`` for
        ``inputs`` as in :meth:`forward_with_experts` (TorchScript-compatible; the trace adds names)."""
        if same_input:
            expert_out = self.experts(inputs[0])
        else:
            expert_out = self.experts.forward_each(torch.stack(inputs).index_select(0, self.expert_group))
        outs: List[torch.Tensor] = []
        probs: List[torch.Tensor] = []
        for i, gate in enumerate(self.gates):
            # Gate i reads task i's input; the shared gate (the last, when present) the shared input.
            g = torch.softmax(gate(inputs[i]), dim=-1)
            idx = self.gate_index[self.gate_offsets[i]:self.gate_offsets[i + 1]]
            outs.append(mix_experts(g.unsqueeze(1), expert_out.index_select(0, idx)).squeeze(1))
            probs.append(g)
        return outs, probs, expert_out

    @torch.jit.ignore
    def forward_with_experts(self, inputs: List[torch.Tensor], same_input: bool = False) -> ExpertTrace:
        """``inputs``: one ``[B, in]`` tensor per task, then the shared input. With
        ``same_input`` all are the same tensor and the experts read it once.

        Returns the trace whose ``outputs`` are the task outputs followed by the shared output
        (only when the level has a shared gate).
        """
        outs, probs, expert_out = self.mix(inputs, same_input)
        info = [GateInfo(self.level, i if i < self.num_tasks else None, [self.expert_names[j] for j in idx])
                for i, idx in enumerate(self._gate_index)]
        experts: Dict[str, torch.Tensor] = {n: expert_out[i] for i, n in enumerate(self.expert_names)}
        return ExpertTrace(outs, probs, info, experts)


class PLE(nn.Module):
    """Multi-level CGC: task-specific and shared experts, task gates and a shared gate per level.

    Args:
        in_features: width of the shared input.
        num_tasks: number of tasks.
        num_levels: number of CGC levels (1 is a single CGC).
        num_task_experts: experts owned by each task, per level.
        num_shared_experts: shared experts per level.
        expert_layers: layer sizes of each expert MLP (every level).
        expert_options: activation, norm and dropout of the expert layers (default ReLU).

    Example::

        ple = PLE(32, num_tasks=2, num_levels=2, num_task_experts=1, num_shared_experts=2,
                  expert_layers=[16])
        outs, gates = ple.forward_with_gates(torch.randn(8, 32))   # 2 x [8, 16]; 5 gates
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_levels: int,
        num_task_experts: int,
        num_shared_experts: int,
        expert_layers: List[int],
        expert_options: Optional[MLPOptions] = None,
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError("PLE needs num_levels >= 1")
        self.num_tasks = num_tasks
        self.out_features = expert_layers[-1]
        self.levels = nn.ModuleList(
            CGCLevel(
                in_features if lvl == 0 else expert_layers[-1],
                num_tasks,
                num_task_experts,
                num_shared_experts,
                expert_layers,
                shared_gate=lvl < num_levels - 1,
                level=lvl,
                expert_options=expert_options,
            )
            for lvl in range(num_levels)
        )

    @torch.jit.ignore
    def forward_with_experts(self, x: torch.Tensor) -> ExpertTrace:
        """Runs every level; the trace holds all of them.

        Args:
            x (torch.Tensor): shared input ``[B, in_features]``.

        Returns:
            ExpertTrace: ``outputs`` one ``[B, out]`` per task (last level); ``gates`` of every level
            (task gates, then the shared gate; ``[B, experts mixed]`` each); ``experts`` every expert's
            ``[B, out]`` output, named ``level{l}/task{k}/expert{j}`` or ``level{l}/shared/expert{j}``.
        """
        inputs = [x] * (self.num_tasks + 1)
        gates: List[torch.Tensor] = []
        info: List[GateInfo] = []
        experts: Dict[str, torch.Tensor] = {}
        for lvl, level in enumerate(self.levels):
            # A method call, not __call__: TorchRec's pipeline tracer then sees plain lists of
            # tensors here instead of one opaque leaf output it cannot unpack.
            trace = level.forward_with_experts(inputs, same_input=lvl == 0)
            inputs = trace.outputs
            gates += trace.gates
            info += trace.gate_info
            experts.update(trace.experts)
        return ExpertTrace(inputs[: self.num_tasks], gates, info, experts)

    def forward_with_gates(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per-task outputs ``[B, out]`` and every gate's weights (task gates, then shared, per level)."""
        inputs = [x] * (self.num_tasks + 1)
        gates: List[torch.Tensor] = []
        lvl = 0
        for level in self.levels:
            # A method call, not __call__: TorchRec's pipeline tracer then sees plain lists of
            # tensors here instead of one opaque leaf output it cannot unpack.
            inputs, probs, _ = level.mix(inputs, same_input=lvl == 0)
            gates += probs
            lvl += 1
        return inputs[: self.num_tasks], gates

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Per-task outputs of the last level (:meth:`forward_with_gates` without the gates).

        Args:
            x (torch.Tensor): shared input ``[B, in_features]``.

        Returns:
            List[torch.Tensor]: one ``[B, expert_layers[-1]]`` output per task.
        """
        return self.forward_with_gates(x)[0]
