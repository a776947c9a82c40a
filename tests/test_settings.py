"""Weights that carry their settings: the settings file beside every weights file, read by every command; the
verdict at the recorded threshold; the figures of a gallery search and of verification."""
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import ROOT, TRAIN, assert_one_line_error, original_format_state_dict, run
from PIL import Image

import eval_oneshot
import predict
from siamese import Siamese
from utils.errors import WeightsError
from utils.figures import draw_matches, draw_verification
from utils.images import eval_transform, ink_square, load_image
from utils.metrics import expected_calibration_error, reliability_bins, threshold_to_record

IMAGES = [str(ROOT / "img" / name) for name in ("alef_1.png", "alef_2.png", "bet_1.png")]


def test_every_weights_file_has_its_settings_file_and_the_predictor_follows_it(trained_run):
    data, logs = trained_run
    for weights in logs.glob("*.pth"):
        settings = json.loads(weights.with_suffix(".json").read_text())
        assert settings["backbone"] == "resnet18" and settings["input_shape"] == [32, 32] and "trained_on" in settings
        assert settings["letterbox_image"] is False and 0 <= settings["threshold"] <= 1
        assert settings["trained_on"]["classes"] == 12 and settings["trained_on"]["split_by"] == "class"
        assert set(settings["calibration"]) == {"scale", "shift"} and settings["calibration"]["scale"] > 0
        state = torch.load(weights, weights_only=True)  # still the original's plain state dict
        assert all(torch.is_tensor(v) for v in state.values()) and "fully_connect2.weight" in state
    best = logs / "best_epoch_weights.pth"
    model = Siamese(model_path=str(best), cuda=False, verbose=False)  # nothing given: the settings file decides
    recorded = json.loads(best.with_suffix(".json").read_text())
    assert model.input_shape == [32, 32] and model.threshold == recorded["threshold"]
    assert model.settings["input_shape"] == ([32, 32], f"from {best.with_suffix('.json')}")
    assert model.verdict(recorded["threshold"]) == "same" and model.verdict(recorded["threshold"] - 1e-6) == "different"
    from_checkpoint = Siamese(model_path=str(logs / "last.ckpt"), cuda=False, verbose=False)
    assert from_checkpoint.input_shape == [32, 32]
    last = Siamese(model_path=str(logs / "last_epoch_weights.pth"), cuda=False, verbose=False)
    assert from_checkpoint.similarity(*IMAGES[:2]) == pytest.approx(last.similarity(*IMAGES[:2]), abs=1e-5)


def test_a_given_setting_that_contradicts_the_file_is_refused_naming_both(trained_run, capsys):
    _, logs = trained_run
    best = logs / "best_epoch_weights.pth"
    with pytest.raises(WeightsError, match=r"input_shape \[64, 64\] contradicts \[32, 32\] recorded in .*best_epoch"):
        Siamese(model_path=str(best), input_shape=[64, 64], cuda=False, verbose=False)
    with pytest.raises(SystemExit, match=r"letterbox_image True contradicts False recorded in"):
        predict.main([*IMAGES[:2], "--model_path", str(best), "--letterbox_image", "True"])
    with pytest.raises(SystemExit, match=r"input_shape \[48, 48\] contradicts \[32, 32\]"):
        eval_oneshot.main(["--dataset", str(trained_run[0] / "images_background"), "--model_path", str(best),
                           "--input_shape", "48", "48"])
    # same flat size (ResNet18 rounds 48/32 and 64/32 up alike): without the file, nothing would tell


def test_weights_without_a_settings_file_work_as_before_and_say_what_they_assume(trained_run, tmp_path, capsys):
    _, logs = trained_run
    bare = tmp_path / "bare.pth"
    shutil.copy(logs / "best_epoch_weights.pth", bare)
    with pytest.raises(SystemExit, match=r"fully_connect1.weight has shape .*pass the input_shape the weights were"):
        predict.main([*IMAGES[:2], "--model_path", str(bare)])  # 105x105 assumed, as the original's predictor
    predict.main([*IMAGES[:2], "--model_path", str(bare), "--input_shape", "32", "32"])
    out, err = capsys.readouterr()
    assert "different (threshold 0.500, default)" in out or "same (threshold 0.500, default)" in out
    assert "no settings file" not in err  # the size was given, nothing assumed
    model = Siamese(model_path=str(bare), input_shape=[32, 32], cuda=False, verbose=False)
    original = tmp_path / "Omniglot_vgg.pth"
    torch.save(original_format_state_dict((105, 105)), original)
    predict.main([*IMAGES[:2], "--model_path", str(original)])
    assert f"note: {original} has no settings file" in capsys.readouterr().err  # and says what it assumed
    assert model.settings["threshold"] == (0.5, "default") and model.settings["input_shape"] == ([32, 32], "given")


def test_a_damaged_settings_file_is_named_in_one_line(trained_run, tmp_path):
    _, logs = trained_run
    weights = tmp_path / "w.pth"
    shutil.copy(logs / "best_epoch_weights.pth", weights)
    for text, reason in (("{not json", "JSONDecodeError"), ('{"input_shape": [32]}', "input_shape [32] is not"),
                         ('{"threshold": 7}', "threshold 7 is not a number in [0, 1]"), ("[1, 2]", "an object")):
        weights.with_suffix(".json").write_text(text)
        result = run("predict.py", *IMAGES[:2], "--model_path", weights)
        assert_one_line_error(result, f"{weights.with_suffix('.json')}: damaged settings file", reason)


def test_the_verdict_follows_the_recorded_threshold_and_threshold_overrides_it(trained_run, capsys):
    _, logs = trained_run
    best = str(logs / "best_epoch_weights.pth")
    model = Siamese(model_path=best, cuda=False, verbose=False)
    similarity = model.similarity(*IMAGES[:2])
    predict.main([*IMAGES[:2], "--model_path", best])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == (f"{similarity:.4f} {'same' if similarity >= model.threshold else 'different'} "
                    f"(threshold {model.threshold:.3f}, from {best[:-4]}.json)")
    for threshold, verdict in ((0.0, "same"), (1.0, "different")):
        predict.main([*IMAGES[:2], "--model_path", best, "--threshold", str(threshold)])
        assert capsys.readouterr().out.strip().endswith(f"{verdict} (threshold {threshold:.3f}, given)")


@pytest.mark.parametrize("value", ["nan", "5", "-0.1"])
def test_a_threshold_outside_0_to_1_is_refused(value, capsys):
    with pytest.raises(SystemExit) as stop:
        predict.parse_args([*IMAGES[:2], "--threshold", value])
    assert stop.value.code == 2 and "must be a number from 0 to 1" in capsys.readouterr().err


def test_gallery_search_draws_the_query_and_its_matches(trained_run, tmp_path):
    data, logs = trained_run
    figure = tmp_path / "matches.png"
    gallery = next((data / "images_background").iterdir())
    predict.main(["--gallery", str(gallery), IMAGES[0], "--top", "3", "--model_path",
                  str(logs / "best_epoch_weights.pth"), "--save", str(figure)])
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 3 * image.height  # four panels in a row
    matches = [(0.9, Image.open(IMAGES[1]), "a/alef_2.png"), (0.1, Image.open(IMAGES[2]), "b/bet_1.png")]
    titles = draw_matches(Image.open(IMAGES[0]), IMAGES[0], matches, 0.5, str(tmp_path / "two.png"))
    assert titles == ["query\nalef_1.png", "0.900\nalef_2.png", "0.100\nbet_1.png"]


def test_the_calibration_error_of_constructed_scores_is_the_hand_computed_one():
    # 10 pairs at 0.85 of which 6 are the same (|0.85 - 0.6| = 0.25), 10 at 0.35 of which 3 are (|0.35 - 0.3| = 0.05)
    scores = np.array([0.85] * 10 + [0.35] * 10)
    labels = np.array([1] * 6 + [0] * 4 + [1] * 3 + [0] * 7)
    assert expected_calibration_error(scores, labels) == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)
    counts, confidence, frequency = reliability_bins(scores, labels)
    assert counts.tolist() == [0, 0, 0, 10, 0, 0, 0, 0, 10, 0]
    assert frequency[8] == pytest.approx(0.6) and confidence[3] == pytest.approx(0.35)
    calibrated = np.array([0.6] * 10 + [0.3] * 10)
    assert expected_calibration_error(calibrated, labels) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0  # 1.0 falls in the last bin


def test_verification_prints_the_calibration_error_and_draws_roc_and_reliability(trained_run, tmp_path, capsys):
    data, logs = trained_run
    figure = tmp_path / "roc.png"
    eval_oneshot.main(["--verify", "--dataset", str(data / "images_background"), "--pairs", "200",
                       "--model_path", str(logs / "best_epoch_weights.pth"), "--save", str(figure)])
    out = capsys.readouterr().out
    assert "expected calibration error" in out and "recorded" in out and f"wrote {figure}" in out
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 1.6 * image.height  # two panels side by side


def test_calibrate_writes_weights_whose_logits_are_the_fitted_scale_and_shift_of_the_originals(trained_run, tmp_path,
                                                                                               capsys):
    from utils.oneshot import evaluate_verification

    data, logs = trained_run
    folder, source, target = str(data / "images_background"), str(logs / "best_epoch_weights.pth"), tmp_path / "c.pth"
    eval_oneshot.main(["--verify", "--dataset", folder, "--pairs", "300", "--model_path", source,
                       "--calibrate", str(target)])
    assert f"wrote {target}" in capsys.readouterr().out
    settings = json.loads(target.with_suffix(".json").read_text())
    fitted = settings["calibrated_on"]
    assert fitted["dataset"] == folder and fitted["pairs"] == 300 and fitted["scale"] > 0
    assert settings["backbone"] == "resnet18" and settings["input_shape"] == [32, 32]
    before, after = (evaluate_verification(Siamese(model_path=path, cuda=False, verbose=False), folder, 300,
                                           progress=False) for path in (source, str(target)))
    torch.testing.assert_close(torch.from_numpy(after["logits"]).double(),
                               fitted["scale"] * torch.from_numpy(before["logits"]).double() + fitted["shift"],
                               atol=1e-4, rtol=1e-4)

    def log_loss(logits, labels):
        return np.mean(np.logaddexp(0, logits) - labels * logits)

    assert log_loss(after["logits"], after["labels"]) <= log_loss(before["logits"], before["labels"]) + 1e-9
    assert after["auc"] == pytest.approx(before["auc"], abs=1e-3)  # a positive scale keeps every ranking
    assert settings["threshold"] == pytest.approx(threshold_to_record(after["scores"], after["labels"]))


def test_calibrating_weights_without_a_settings_file_records_the_settings_it_scored_with(trained_run, tmp_path):
    data, logs = trained_run
    bare, target = tmp_path / "bare.pth", tmp_path / "calibrated.pth"
    shutil.copy(logs / "best_epoch_weights.pth", bare)
    eval_oneshot.main(["--verify", "--dataset", str(data / "images_background"), "--pairs", "100", "--model_path",
                       str(bare), "--input_shape", "32", "32", "--calibrate", str(target)])
    assert Siamese(model_path=str(target), cuda=False, verbose=False).input_shape == [32, 32]


@pytest.mark.parametrize("extra, message", [
    (["--verify", "--calibrate", "{logs}/best_epoch_weights.pth"], "would replace the weights being calibrated"),
    (["--verify", "--calibrate", "{logs}/best_epoch_weights.pt"], "would replace"),  # the same .json beside it
    (["--verify", "--calibrate", "{logs}/new.json"], "is a .json name"),
    (["--calibrate", "{logs}/new.pth"], "--calibrate go with --verify"),
])
def test_calibrate_refuses_a_target_that_would_replace_the_weights_or_a_settings_file(trained_run, capsys, extra,
                                                                                      message):
    data, logs = trained_run
    before = {path.name: path.read_bytes() for path in logs.glob("best_epoch_weights.*")}
    with pytest.raises(SystemExit):
        eval_oneshot.main(["--dataset", str(data / "images_background"), "--model_path",
                           str(logs / "best_epoch_weights.pth")] + [arg.format(logs=logs) for arg in extra])
    assert message in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in logs.glob("best_epoch_weights.*")} == before
    assert not list(logs.glob("new.*"))


def test_platt_scaling_recovers_a_known_calibration_and_folds_into_the_head():
    from nets.siamese import SiameseNetwork
    from utils.metrics import platt_scaling
    from utils.weights import fold_calibration

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 20000)
    labels = rng.random(20000) < 1 / (1 + np.exp(-(0.5 * logits - 1.0)))
    scale, shift = platt_scaling(logits, labels)
    assert scale == pytest.approx(0.5, abs=0.03) and shift == pytest.approx(-1.0, abs=0.06)
    net = SiameseNetwork((32, 32), "resnet18").eval()
    folded = SiameseNetwork((32, 32), "resnet18").eval()
    folded.load_state_dict(fold_calibration(net.state_dict(), scale, shift))
    emb1, emb2 = torch.rand(5, 512), torch.rand(5, 512)
    with torch.no_grad():
        torch.testing.assert_close(folded.score(emb1, emb2), scale * net.score(emb1, emb2) + shift)


def test_figures_come_out_for_a_single_score_class(tmp_path):
    draw_verification(np.array([0.2, 0.4, 0.9]), np.array([0, 1, 1]), 0.5, str(tmp_path / "v.png"))
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"


def test_test_time_augmentation_averages_the_embeddings_of_shifted_views(trained_run):
    from siamese import shifted_views

    _, logs = trained_run
    plain = Siamese(model_path=str(logs / "best_epoch_weights.pth"), cuda=False, verbose=False)
    averaged = Siamese(model_path=str(logs / "best_epoch_weights.pth"), cuda=False, verbose=False, tta=2)
    batch = torch.stack([plain.preprocess(path) for path in IMAGES])
    views = shifted_views(batch, 2)
    assert len(views) == 3 and torch.equal(views[0], batch)
    assert torch.equal(views[1][..., :-1, :], batch[..., 1:, :])  # moved one pixel (a 32nd of 32) up
    with torch.no_grad():
        expected = torch.stack([plain.net.embed(view) for view in views]).mean(0)
    torch.testing.assert_close(averaged.embed(IMAGES), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(plain.embed(IMAGES), plain.net.embed(batch).detach())


def test_weights_trained_on_ink_crops_make_prediction_crop_to_ink_too(omniglot_subset, tmp_path):
    import train

    logs = tmp_path / "logs"
    config, _ = train.parse_train_config(["--dataset_path", str(omniglot_subset), "--save_dir", str(logs), *TRAIN,
                                          "--backbone", "conv4", "--pairing", "batch", "--batch_size", "8",
                                          "--split_by", "class", "--Epoch", "1", "--crop_to_ink", "True",
                                          "--bf16", "False", "--oneshot_way", "0"])
    train.main(config)
    weights = logs / "last_epoch_weights.pth"
    assert json.loads(weights.with_suffix(".json").read_text())["crop_to_ink"] is True
    model = Siamese(model_path=str(weights), cuda=False, verbose=False)  # nothing given: the file says crop
    assert model.settings["crop_to_ink"] == (True, f"from {weights.with_suffix('.json')}")
    drawing = str(next(omniglot_subset.rglob("*.png")))
    framed = eval_transform([32, 32])(ink_square(load_image(drawing)))  # the crop, done here independently
    with torch.no_grad():
        expected = model.net.embed((framed.float() / 255)[None]).flatten(1)
    torch.testing.assert_close(model.embed([drawing]), expected, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        whole = model.net.embed((eval_transform([32, 32])(load_image(drawing)).float() / 255)[None]).flatten(1)
    assert not torch.allclose(whole, expected, atol=1e-3)  # the crop changed what the network saw
    with pytest.raises(SystemExit, match=r"crop_to_ink False contradicts True recorded in"):
        predict.main([drawing, drawing, "--model_path", str(weights), "--crop_to_ink", "False"])
