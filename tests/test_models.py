"""Every registered model: the Keras parameter counts, forward/backward, no NaN, logits out."""

import pytest
import torch

from mnist_cnn import create_model, list_models
from mnist_cnn.config import RECIPES
from mnist_cnn.models import count_parameters

# From model.summary() of the seeds' Keras models (valid 3x3 convolutions, 2x2 max-pooling).
KERAS_PARAMETERS = {"basic": 225_034, "dropout": 34_826, "three-conv": 93_322}


def test_registry_lists_the_seed_architectures():
    assert set(list_models()) >= {"basic", "dropout", "three-conv", "deep"}


@pytest.mark.parametrize("name,expected", KERAS_PARAMETERS.items())
def test_parameter_counts_equal_keras(name, expected):
    assert count_parameters(create_model(name)) == expected


def test_every_recipe_builds_its_model_with_the_documented_count():
    for recipe in RECIPES.values():
        model = create_model(recipe.config.model)
        if recipe.config.model in KERAS_PARAMETERS:
            assert count_parameters(model) == KERAS_PARAMETERS[recipe.config.model]


def assert_logits(output: torch.Tensor) -> None:
    """Raw scores: neither probabilities (rows summing to 1) nor log-probabilities (rows whose exp sums to 1)."""
    ones = torch.ones(len(output))
    assert not torch.allclose(output.sum(1), ones, atol=1e-3), "rows sum to 1: the model returns probabilities"
    assert not torch.allclose(output.logsumexp(1), 0 * ones, atol=1e-3), "the model returns log-probabilities"


def test_the_logits_check_catches_probabilities_and_log_probabilities():
    torch.manual_seed(0)
    logits = create_model("basic")(torch.randn(8, 1, 28, 28))
    assert_logits(logits)
    for normalised, says in [(logits.softmax(1), "probabilities"), (logits.log_softmax(1), "log-probabilities")]:
        with pytest.raises(AssertionError, match=says):
            assert_logits(normalised)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_no_nan(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(8, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (8, 10)
    assert_logits(logits)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(8) % 10)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", list_models())
def test_num_classes_and_channels_are_honoured(name):
    model = create_model(name, in_channels=3, num_classes=4).eval()
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 4)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*basic.*deep.*dropout.*three-conv"):
        create_model("resnet")
