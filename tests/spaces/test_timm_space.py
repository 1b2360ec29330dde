"""The "timm" space: any timm model by name, made searchable by a mutate preset, reachable wherever a space name is."""

import pytest
import torch

import lightning_nas as ln
from lightning_nas.classification import ImageClassifier
from lightning_nas.spaces import create_space, list_spaces


def test_a_timm_model_by_name_is_a_searchable_supernet_that_exports_exactly():
    assert "timm" in list_spaces()
    torch.manual_seed(0)
    supernet = create_space("timm", model_name="mobilenetv3_small_050", num_classes=4, in_chans=1)
    assert isinstance(supernet, ln.Supernet) and len(supernet.space) > 0
    arch = supernet.space.sample(seed=3)
    supernet.activate(arch)
    supernet.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        expected = supernet(x)
        got = supernet.export(arch).eval()(x)
    assert expected.shape == (2, 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_yaml_model_names_a_timm_model():
    model = ImageClassifier(space="timm", space_kwargs={"model_name": "mobilenetv3_small_050"}, num_classes=3, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="`model_name` 'no_such_net' is not a timm model"):
        create_space("timm", model_name="no_such_net")
    with pytest.raises(ValueError, match="`preset` must be one of"):
        create_space("timm", model_name="mobilenetv3_small_050", preset="vit")
