"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

``n`` experts ``f_i`` read the shared input ``x``; task ``k`` has a gate
``g_k(x) = softmax(W_k x)`` and receives ``h_k = sum_i g_k(x)_i f_i(x)``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from mtl_torchrec.modules.experts import BatchedExperts, ExpertTrace, GateInfo, mix_experts
from mtl_torchrec.modules.mlp import MLPOptions, make_mlp


class MMoE(nn.Module):
    """Experts shared by all tasks, mixed by one softmax gate per task.

    Args:
        in_features: width of the shared input.
        num_tasks: number of tasks (gates).
        num_experts: number of experts.
        expert_layers: layer sizes of each expert MLP.
        gate_layers: hidden layers of each gate before its softmax (empty: linear gate, as in
            the paper).
        single_gate: one gate shared by all tasks (OMoE, the paper's one-gate baseline).
        expert_options / gate_options: activation, norm and dropout of the expert layers and of
            the gates' hidden layers (:class:`~mtl_torchrec.modules.mlp.MLPOptions`; default ReLU).

    Example::

        mmoe = MMoE(in_features=32, num_tasks=2, num_experts=4, expert_layers=[64, 16])
        outs = mmoe(torch.randn(8, 32))            # list of 2 tensors, each [8, 16]
        outs, gates = mmoe.forward_with_gates(torch.randn(8, 32))  # gates: 2 x [8, 4]
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        num_experts: int,
        expert_layers: List[int],
        gate_layers: Optional[List[int]] = None,
        single_gate: bool = False,
        expert_options: Optional[MLPOptions] = None,
        gate_options: Optional[MLPOptions] = None,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.num_experts = num_experts
        self.single_gate = single_gate
        self.out_features = expert_layers[-1]
        self.experts = BatchedExperts(in_features, num_experts, expert_layers, expert_options)
        gate_layers = list(gate_layers or [])
        num_gates = 1 if single_gate else num_tasks
        self.gates = nn.ModuleList()
        for _ in range(num_gates):
            hidden = make_mlp(in_features, gate_layers, gate_options) if gate_layers else nn.Identity()
            width = gate_layers[-1] if gate_layers else in_features
            self.gates.append(nn.Sequential(hidden, nn.Linear(width, num_experts)))

    def forward_with_gates(self, x: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Returns per-task outputs ``[B, out]`` and per-task gate weights ``[B, num_experts]``."""
        expert_out = self.experts(x)  # [E, B, D]
        gate_probs = [torch.softmax(g(x), dim=-1) for g in self.gates]
        if self.single_gate:
            gate_probs = gate_probs * self.num_tasks
        outs = self._mix(gate_probs, expert_out)
        return outs, gate_probs

    def _mix(self, gate_probs: List[torch.Tensor], expert_out: torch.Tensor) -> List[torch.Tensor]:
        """Every task's mixture in one batched matmul (:func:`~mtl_torchrec.modules.experts.mix_experts`)."""
        mixed = mix_experts(torch.stack(gate_probs, dim=1), expert_out)
        return [mixed[:, k] for k in range(self.num_tasks)]

    def forward_with_experts(self, x: torch.Tensor) -> ExpertTrace:
        """Like :meth:`forward_with_gates`, plus every expert's output and what each gate mixes."""
        expert_out = self.experts(x)
        gate_probs = [torch.softmax(g(x), dim=-1) for g in self.gates]
        if self.single_gate:
            gate_probs = gate_probs * self.num_tasks
        outs = self._mix(gate_probs, expert_out)
        names = [f"expert{i}" for i in range(self.num_experts)]
        info = [GateInfo(0, k, names) for k in range(self.num_tasks)]
        return ExpertTrace(outs, gate_probs, info, {n: expert_out[i] for i, n in enumerate(names)})

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Per-task mixtures of the experts (:meth:`forward_with_gates` without the gates).

        Args:
            x (torch.Tensor): shared input ``[B, in_features]``.

        Returns:
            List[torch.Tensor]: one ``[B, expert_layers[-1]]`` output per task.
        """
        return self.forward_with_gates(x)[0]
