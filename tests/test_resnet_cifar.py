import torch
from transformers import AutoModelForImageClassification

from hfvision import ResNetCifarConfig, ResNetCifarForImageClassification


def test_cifar_resnet18_shape_and_size():
    model = ResNetCifarForImageClassification(ResNetCifarConfig(num_labels=10))
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert isinstance(model.resnet.stem[0], torch.nn.Conv2d) and model.resnet.stem[0].kernel_size == (3, 3)
    assert model.resnet.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    out = model.resnet(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 512, 4, 4)  # the 3x3 stem keeps a 4x4 grid at the end


def test_round_trip_and_gradients(tmp_path):
    torch.manual_seed(0)
    model = ResNetCifarForImageClassification(ResNetCifarConfig(num_labels=4, stage_widths=[8, 16], blocks_per_stage=[1, 1]))
    pixels = torch.randn(4, 3, 32, 32)
    loss = model(pixels, labels=torch.tensor([0, 1, 2, 3])).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits, rtol=0, atol=0)
