import pytest
import torch
from torch import nn

from ssl_zoo.models.ema import ema_update, make_teacher


def test_teacher_is_frozen_eval_copy_with_batch_statistics():
    student = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    teacher = make_teacher(student)
    assert not teacher.training and not teacher[2].training  # no dropout
    assert teacher[1].training  # BatchNorm normalises with the batch, as the references do
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))


def test_ema_math_leaves_buffers_alone():
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = make_teacher(student)
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(5.0)
    ema_update(teacher, student, momentum=0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    assert torch.equal(teacher[1].running_mean, torch.zeros(2))
    ema_update(teacher, student, momentum=1.0)  # momentum 1: nothing moves
    ema_update(teacher, student, momentum=0.0)  # momentum 0: copy
    for t, s in zip(teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, s)


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_momentum_out_of_range(momentum):
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(make_teacher(net), net, momentum)
