"""--input-shape on PyTorch sources: a shape the user gives is used or refused, never dropped.

Before, a zoo model or a factory with example inputs ignored --input-shape (MACs and latency were
counted at the example's shape), and a name matching no input was accepted."""
import pytest
import torch

from graphprune.errors import GraphpruneError
from graphprune.io.example_shapes import inputs_from_shapes
from graphprune.io.sources import load


class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)

    def forward(self, input_ids, attention_mask=None):
        return self.emb(input_ids) * attention_mask[..., None]


class Two(torch.nn.Module):
    def forward(self, a, b):
        return a + b


def test_a_zoo_model_is_traced_at_the_shape_given():
    src = load("resnet18", {"x": (2, 3, 48, 40)})
    assert src.args[0].shape == (2, 3, 48, 40)
    assert src.model(*src.args).shape[0] == 2  # runs at the new shape


def test_a_single_input_takes_the_shape_whatever_its_label():
    (x,), kwargs = inputs_from_shapes(torch.nn.Identity(), {"images": (1, 4)}, "m", (torch.zeros(1, 2),))
    assert x.shape == (1, 4) and kwargs == {}


def test_token_inputs_keep_their_kind_of_values():
    ids = torch.tensor([[3, 17, 9, 44]])
    args, kwargs = inputs_from_shapes(Tokens(), {"input_ids": (2, 16), "attention_mask": (2, 16)}, "m",
                                      kwargs={"input_ids": ids, "attention_mask": torch.ones(1, 4, dtype=torch.long)})
    assert args == ()
    assert kwargs["input_ids"].dtype == torch.long and kwargs["input_ids"].shape == (2, 16)
    assert 3 <= int(kwargs["input_ids"].min()) and int(kwargs["input_ids"].max()) <= 44  # the example's id range
    assert bool((kwargs["attention_mask"] == 1).all()) and kwargs["attention_mask"].dtype == torch.long


@pytest.mark.parametrize("shapes,message", [
    ({"a": (1, 2), "c": (1, 2)}, "--input-shape names c, but MODEL 'm' takes a, b"),
    ({"a": (1, 2, 3)}, "has 3 dims; the input has 2 (1x2)"),
])
def test_a_shape_that_fits_no_input_is_refused(shapes, message):
    with pytest.raises(GraphpruneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        inputs_from_shapes(Two(), shapes, "m", (torch.zeros(1, 2), torch.zeros(1, 2)))


def test_without_examples_names_must_be_forward_parameters_or_positional_in_number():
    args, kwargs = inputs_from_shapes(Two(), {"a": (1, 2), "b": (1, 2)}, "m")
    assert args == () and set(kwargs) == {"a", "b"}
    args, _ = inputs_from_shapes(Two(), {"left": (1, 2), "right": (1, 2)}, "m")  # labels: positional, in order
    assert len(args) == 2
    with pytest.raises(GraphpruneError, match=r"forward takes \(a, b\)"):
        inputs_from_shapes(Two(), {"a": (1, 2), "z": (1, 2)}, "m")  # one name matches, one is a typo
    with pytest.raises(GraphpruneError, match=r"forward takes \(a, b\)"):
        inputs_from_shapes(Two(), {"p": (1,), "q": (1,), "r": (1,)}, "m")  # three for two inputs


def test_a_mask_shaped_as_the_resized_ids_follows_them():
    """--input-shape input_ids:1x128 on a transformers folder left the 2x16 attention mask as it was,
    and torch.export failed on the mismatch."""
    ids = torch.tensor([[3, 17, 9, 44]] * 2)
    _, kwargs = inputs_from_shapes(Tokens(), {"input_ids": (1, 12)}, "m",
                                   kwargs={"input_ids": ids, "attention_mask": torch.ones(2, 4, dtype=torch.long)})
    assert kwargs["input_ids"].shape == kwargs["attention_mask"].shape == (1, 12)
    assert bool((kwargs["attention_mask"] == 1).all())
