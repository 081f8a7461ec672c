"""Where the update goes: the geometry figures on updates whose answer is known, and a run that writes them."""

import math

import pyarrow.parquet as pq
import pytest
import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model

from orchestrator.core.contract import GEOMETRY_SCHEMA, StudyPaths
from orchestrator.core.plan import RunSpec
from orchestrator.resolve import load_study
from tests.fixtures import variance_task
from workers import geometry
from workers.geometry import effective_rank, principal_basis, update_factors, update_geometry
from workers.run import execute_run


def planted_weight(out_dim=48, in_dim=32, seed=0):
    """W0 = U diag(s) V^T with a fast-decaying spectrum, and its exact singular vectors."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out_dim, out_dim, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(in_dim, in_dim, generator=g, dtype=torch.float64))
    s = 10.0 * 0.7 ** torch.arange(in_dim, dtype=torch.float64)
    return u[:, :in_dim] @ torch.diag(s) @ v.T, u, v


def test_planted_rank2_update_inside_the_principal_subspace():
    w0, u, v = planted_weight()
    m = torch.tensor([[3.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    left, right, scale = u[:, :2] @ m, v[:, :2].T, 0.5  # dW = 0.5 U_2 M V_2^T: rank 2, inside the top-2 subspace
    g = update_geometry(left, right, scale, principal_basis(w0, k=4))
    sigma = torch.linalg.svdvals(scale * m)
    assert g.update_norm == pytest.approx(0.5 * float(torch.linalg.norm(m)), rel=1e-9)
    assert g.principal_overlap == pytest.approx(1.0, abs=1e-6)
    p = sigma / sigma.sum()
    assert g.effective_rank == pytest.approx(math.exp(-float((p * p.log()).sum())), rel=1e-9)
    assert 1.0 < g.effective_rank < 2.0
    # The same update outside the top-4 subspace: no share at all; a random one: about k^2 / (out * in).
    outside = update_geometry(u[:, 10:12] @ m, v[:, 10:12].T, scale, principal_basis(w0, k=4))
    assert outside.principal_overlap == pytest.approx(0.0, abs=1e-6)
    assert outside.update_norm == pytest.approx(g.update_norm, rel=1e-9)
    half_inside = update_geometry(torch.stack([u[:, 0], u[:, 20]], 1), torch.stack([v[:, 0], v[:, 20]]), 1.0,
                                  principal_basis(w0, k=4))
    assert half_inside.principal_overlap == pytest.approx(0.5, abs=1e-6)
    assert half_inside.effective_rank == pytest.approx(2.0, rel=1e-9)


def test_zero_update_and_effective_rank_edges():
    w0, _, _ = planted_weight()
    g = update_geometry(torch.zeros(48, 4), torch.randn(4, 32), 2.0, principal_basis(w0, k=4))
    assert g.update_norm == 0.0 and math.isnan(g.effective_rank) and math.isnan(g.principal_overlap)
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0])) == pytest.approx(3.0)
    assert math.isnan(effective_rank(torch.zeros(3)))


def test_randomised_svd_above_the_exact_limit_finds_the_same_subspace(monkeypatch):
    w0, u, v = planted_weight()
    monkeypatch.setattr(geometry, "EXACT_SVD_MAX_DIM", 8)
    u_k, v_k = principal_basis(w0, k=4)
    # Same subspace: the projections agree (signs and rotations within it do not matter).
    assert torch.allclose(u_k.double() @ u_k.double().T, u[:, :4] @ u[:, :4].T, atol=1e-4)
    assert torch.allclose(v_k.double() @ v_k.double().T, v[:, :4] @ v[:, :4].T, atol=1e-4)


class TwoLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(32, 48, bias=False)

    def forward(self, x):
        return self.q_proj(x)


@pytest.mark.parametrize("kind", ["lora", "adalora"])
def test_update_factors_reproduce_peft_delta_weight(kind):
    torch.manual_seed(0)
    if kind == "lora":
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    else:
        config = AdaLoraConfig(init_r=6, target_r=4, lora_alpha=8, target_modules=["q_proj"], total_step=10)
    model = get_peft_model(TwoLinear(), config)
    layer = model.base_model.model.q_proj
    with torch.no_grad():
        for p in layer.parameters():
            if p.requires_grad:
                p.normal_()
    left, right, scale = update_factors(layer)
    delta = layer.get_delta_weight("default").double()
    assert torch.allclose(scale * left.double() @ right.double(), delta, atol=1e-5)
    g = update_geometry(left, right, scale, principal_basis(layer.get_base_layer().weight, k=3))
    assert g.update_norm == pytest.approx(float(torch.linalg.norm(delta)), rel=1e-5)


def test_run_writes_the_geometry_table_at_checkpoints_and_at_the_end(write_study_config, tmp_path):
    # The test task's length reward makes every group disagree, so every module trains on any CPU (issue 24).
    config = load_study(write_study_config(profile={"geometry": True, "geometry_top_k": 4},
                                            grpo={"max_steps": 2, "checkpoint_every": 1},
                                            data={"task": variance_task.NAME}, rewards=variance_task.REWARDS)).config
    record = execute_run(config, RunSpec("uniform", 0, num_gpus=0, num_cpus=1), tmp_path)
    assert "geometry" in record.tables
    table = pq.read_table(StudyPaths(tmp_path).table("geometry", record.run_id))
    assert table.schema.equals(GEOMETRY_SCHEMA)
    frame = table.to_pandas()
    layers, modules = record.num_layers, len(config.lora.target_modules)
    assert sorted(frame["step"].unique()) == [1, 2] and len(frame) == 2 * layers * modules
    assert (frame["rank"] == config.lora.rank).all()
    final = frame[frame["step"] == 2]
    assert (final["update_norm"] > 0).all()  # LoRA-B has moved off zero in every module
    assert ((final["effective_rank"] >= 1) & (final["effective_rank"] <= config.lora.rank)).all()
    assert ((final["principal_overlap"] >= 0) & (final["principal_overlap"] <= 1)).all()
