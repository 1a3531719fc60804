"""geoptim under the real Lightning Trainer: CosinePScheduler returned from configure_optimizers
(chained with an LR schedule), checkpointed by Lightning; a run resumed from a checkpoint must end
bit-for-bit where the uninterrupted run ends, p included."""

import math

import pytest
import torch
from torch import nn

import geoptim

L = pytest.importorskip("lightning.pytorch")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Lightning's advice on workers, logging
]
EPOCHS, T_MAX = 4, 5


class TinyClassifier(L.LightningModule):
    """No dropout and no shuffling: Lightning does not checkpoint the random number generators."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = geoptim.create_optimizer(self, "lpsgdm", lr=0.05, weight_decay=1e-3)
        lr = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_MAX)
        p = geoptim.CosinePScheduler(optimizer, p_max=8.0, T_max=T_MAX)
        return [optimizer], [lr, p]  # Lightning validates, steps (per epoch), checkpoints both


def _loader():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(48, 6, generator=generator)
    y = torch.randint(0, 3, (48,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _fit(root, seed: int, max_epochs: int, ckpt_path=None) -> tuple[TinyClassifier, L.Trainer]:
    L.seed_everything(seed, verbose=False)
    model = TinyClassifier()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[L.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1)],
        deterministic=True,
    )
    trainer.fit(model, _loader(), ckpt_path=ckpt_path)
    return model, trainer


def test_lightning_resume_equals_uninterrupted_run_p_included(tmp_path):
    full, full_trainer = _fit(tmp_path / "full", seed=0, max_epochs=EPOCHS)
    (optimizer,) = full_trainer.optimizers
    p_expected = 2 + 6 * (1 + math.cos(math.pi * EPOCHS / T_MAX)) / 2
    assert optimizer.param_groups[0]["p"] == pytest.approx(p_expected)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(
        0.025 * (1 + math.cos(math.pi * EPOCHS / T_MAX))
    )

    (checkpoint,) = (tmp_path / "full").glob("epoch=1-*.ckpt")  # after 2 of the 4 epochs
    resumed, resumed_trainer = _fit(
        tmp_path / "resumed", seed=1, max_epochs=EPOCHS, ckpt_path=checkpoint
    )
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    (resumed_optimizer,) = resumed_trainer.optimizers
    for key in ("p", "lr"):
        assert resumed_optimizer.param_groups[0][key] == optimizer.param_groups[0][key]
