"""geoptim under the real Hugging Face Trainer: a tiny GPT-2 built from a config (random weights,
nothing downloaded), trained a few epochs; a run resumed from a checkpoint must end bit-for-bit
where the uninterrupted run ends, p included."""

import math

import pytest
import torch

import geoptim

transformers = pytest.importorskip("transformers")
from geoptim.integrations.transformers import PScheduleCallback  # noqa: E402

pytestmark = pytest.mark.slow
EPOCHS, STEPS_PER_EPOCH = 3, 4


def _model(seed: int):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=2
    )  # dropout 0.1 everywhere: the resumed run must restore the RNG too
    return transformers.GPT2LMHeadModel(config)


def _data():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32, (4 * STEPS_PER_EPOCH, 8), generator=generator)
    return [{"input_ids": row, "labels": row} for row in ids]


def _trainer(out, seed: int, interval: str):
    model = _model(seed)
    optimizer = geoptim.create_optimizer(model, "lpsgdm", lr=1e-2, weight_decay=1e-2)
    args = transformers.TrainingArguments(
        output_dir=str(out),
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=4,
        save_strategy="epoch",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    callback = PScheduleCallback(
        p_max=6.0, T_max=4 if interval == "epoch" else 16, interval=interval
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=_data(),
        optimizers=(optimizer, None),  # Trainer adds its linear LR decay
        callbacks=[callback],
    )
    return trainer, optimizer


def _p(k: int, T: int) -> float:
    return 2 + 4 * (1 + math.cos(math.pi * min(k, T) / T)) / 2


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_trainer_resume_equals_uninterrupted_run_p_included(tmp_path, interval):
    full, full_opt = _trainer(tmp_path / "full", seed=0, interval=interval)
    full.train()
    T, done = (4, EPOCHS) if interval == "epoch" else (16, EPOCHS * STEPS_PER_EPOCH)
    assert [g["p"] for g in full_opt.param_groups] == [_p(done, T)] * len(full_opt.param_groups)

    checkpoint = tmp_path / "full" / f"checkpoint-{2 * STEPS_PER_EPOCH}"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    k_saved = 2 if interval == "epoch" else 2 * STEPS_PER_EPOCH
    assert saved["param_groups"][0]["p"] == pytest.approx(_p(k_saved, T))

    resumed, resumed_opt = _trainer(tmp_path / "resumed", seed=123, interval=interval)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == full.state.global_step == EPOCHS * STEPS_PER_EPOCH
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [g["p"] for g in resumed_opt.param_groups] == [g["p"] for g in full_opt.param_groups]
    assert [g["lr"] for g in resumed_opt.param_groups] == [g["lr"] for g in full_opt.param_groups]
