"""Focal loss kernels (sigmoid and softmax), forward and backward.

Targets are class indices. For the sigmoid loss a target equal to the
number of classes means background (every class is negative). The
optional per-class ``weight`` (empty tensor for none) scales a sample's
loss by the weight of its target class; a background target has no class
weight and keeps weight 1.
"""
import torch

EPS_LOG = torch.finfo(torch.float32).tiny  # log's argument floor (FLT_MIN)


def _log(value: torch.Tensor) -> torch.Tensor:
    return torch.log(value.clamp(min=EPS_LOG))


def _target_weight(weight: torch.Tensor, target: torch.Tensor,
                   dtype) -> torch.Tensor:
    """Per-sample class weight; 1 where there is none."""
    if weight.numel() == 0:
        return torch.ones(target.shape, dtype=dtype, device=target.device)
    inside = (target >= 0) & (target < weight.numel())
    picked = weight.to(dtype)[target.clamp(0, weight.numel() - 1)]
    return torch.where(inside, picked, torch.ones_like(picked))


def _sigmoid_terms(input, target):
    prob = torch.sigmoid(input)
    classes = torch.arange(input.size(1), device=input.device)
    positive = (target[:, None] == classes[None, :]).to(input.dtype)
    return prob, positive


def sigmoid_focal_loss_forward(input: torch.Tensor, target: torch.Tensor,
                               weight: torch.Tensor, output: torch.Tensor,
                               gamma: float, alpha: float) -> None:
    """Write the element-wise sigmoid focal loss into ``output`` (N, C).

    ``-alpha (1-p)^gamma log p`` for the target class and
    ``-(1-alpha) p^gamma log(1-p)`` for the others, ``p = sigmoid(x)``.

    Example:
        >>> out = torch.zeros(1, 2)
        >>> sigmoid_focal_loss_forward(torch.zeros(1, 2), torch.tensor([0]),
        ...                            torch.empty(0), out, 2.0, 0.25)
        >>> out
        tensor([[0.0433, 0.1300]])
    """
    prob, positive = _sigmoid_terms(input, target)
    loss_pos = -alpha * (1 - prob).pow(gamma) * _log(prob)
    loss_neg = -(1 - alpha) * prob.pow(gamma) * _log(1 - prob)
    loss = positive * loss_pos + (1 - positive) * loss_neg
    output.copy_(loss * _target_weight(weight, target, input.dtype)[:, None])


def sigmoid_focal_loss_backward(input: torch.Tensor, target: torch.Tensor,
                                weight: torch.Tensor,
                                grad_input: torch.Tensor, gamma: float,
                                alpha: float) -> None:
    """Write d(loss)/d(input) of :func:`sigmoid_focal_loss_forward`.

    Example:
        >>> grad = torch.zeros(1, 2)
        >>> sigmoid_focal_loss_backward(torch.zeros(1, 2), torch.tensor([0]),
        ...                             torch.empty(0), grad, 2.0, 0.25)
        >>> grad
        tensor([[-0.0746,  0.2237]])
    """
    prob, positive = _sigmoid_terms(input, target)
    grad_pos = -alpha * (1 - prob).pow(gamma) * (
        1 - prob - gamma * prob * _log(prob))
    grad_neg = -(1 - alpha) * prob.pow(gamma) * (
        gamma * (1 - prob) * _log(1 - prob) - prob)
    grad = positive * grad_pos + (1 - positive) * grad_neg
    grad_input.copy_(grad *
                     _target_weight(weight, target, input.dtype)[:, None])


def _target_prob(softmax: torch.Tensor, target: torch.Tensor):
    labelled = target >= 0
    prob = softmax.gather(1, target.clamp(min=0)[:, None])[:, 0]
    return prob, labelled


def softmax_focal_loss_forward(softmax: torch.Tensor, target: torch.Tensor,
                               weight: torch.Tensor, output: torch.Tensor,
                               gamma: float, alpha: float) -> None:
    """Write ``-alpha (1-p)^gamma log p`` per sample into ``output`` (N,).

    ``softmax`` holds class probabilities; ``p`` is the target's. Samples
    with a negative target get 0.

    Example:
        >>> out = torch.zeros(1)
        >>> softmax_focal_loss_forward(torch.tensor([[0.5, 0.5]]),
        ...                            torch.tensor([1]), torch.empty(0),
        ...                            out, 2.0, 0.25)
        >>> out
        tensor([0.0433])
    """
    prob, labelled = _target_prob(softmax, target)
    loss = -alpha * (1 - prob).pow(gamma) * _log(prob)
    loss = torch.where(labelled, loss, torch.zeros_like(loss))
    output.copy_(loss * _target_weight(weight, target, softmax.dtype))


def softmax_focal_loss_backward(softmax: torch.Tensor, target: torch.Tensor,
                                weight: torch.Tensor, buff: torch.Tensor,
                                grad_input: torch.Tensor, gamma: float,
                                alpha: float) -> None:
    """Write d(loss)/d(logits) of :func:`softmax_focal_loss_forward`.

    ``buff`` (N,) receives d(loss)/d(log p) per sample; the logits'
    gradient is ``buff * (onehot(target) - softmax)``.

    Example:
        >>> buff, grad = torch.zeros(1), torch.zeros(1, 2)
        >>> softmax_focal_loss_backward(torch.tensor([[0.5, 0.5]]),
        ...                             torch.tensor([1]), torch.empty(0),
        ...                             buff, grad, 2.0, 0.25)
        >>> grad
        tensor([[ 0.0746, -0.0746]])
    """
    prob, labelled = _target_prob(softmax, target)
    per_sample = alpha * (-(1 - prob).pow(gamma) + gamma *
                          (1 - prob).pow(gamma - 1) * prob * _log(prob))
    per_sample = torch.where(labelled, per_sample,
                             torch.zeros_like(per_sample))
    per_sample = per_sample * _target_weight(weight, target, softmax.dtype)
    buff.copy_(per_sample)
    classes = torch.arange(softmax.size(1), device=softmax.device)
    onehot = (target[:, None] == classes[None, :]).to(softmax.dtype)
    grad = per_sample[:, None] * (onehot - softmax)
    grad_input.copy_(torch.where(labelled[:, None], grad,
                                 torch.zeros_like(grad)))
