"""The packed trainer: K trials trained at once as one Keras model with a member axis.

Every Dense weight carries a leading member axis (kernel ``(K, in, out)``, bias
``(K, out)``). The input batch is shared by all members; per-member L1/L2 coefficients,
dropout rates and an "active" mask are non-trainable variables of shape ``(K,)``, so the
train step is traced once per architecture and reused for every pack of trials.

The loss is the sum over members of each member's own loss (mean data loss over the
batch plus its own L1/L2 penalty, as ``keras.regularizers`` compute it; the penalty enters
through its gradient alone, see `PackedNet.penalties`). Members share no parameter, so the
gradient of member k is exactly the gradient its standalone model would get on the same
batch; the optimizer keeps per-slot step counts so Adam's bias correction
restarts when a slot is refilled. A member is exported as the standard model of
`regsearch.model.build_model` with its weights.
"""

from regsearch.trainers.packed.layers import (MemberDataLoss, MemberDropout, MemberWrites,
                                              PackedDense, PackedNet, member_sample_losses)
from regsearch.trainers.packed.optimizers import (SlotAdam, SlotSGD,
                                                  make_optimizer)
from regsearch.trainers.packed.sizing import choose_pack_size, member_parameters
from regsearch.trainers.packed.trainer import PackedTrainer

__all__ = ["MemberDataLoss", "MemberDropout", "MemberWrites",
           "PackedDense", "PackedNet", "PackedTrainer", "SlotAdam", "SlotSGD",
           "choose_pack_size", "make_optimizer", "member_parameters", "member_sample_losses"]
