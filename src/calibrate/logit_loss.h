// Logit distillation, the alternative to the hidden-state L2 of docs/calibration.md "Loss" that
// `duo calibrate --loss kl` selects: the frozen model's and the gated model's final hidden states
// at the answer rows go through the frozen LM head (z = H W_out^T), and the loss is the mean over
// rows of KL(softmax(z_full) || softmax(z_mix)). It weighs a head by how much dropping it changes
// the predicted answer rather than by how far it moves the hidden state, whose drift is dominated
// by early layers whose errors propagate (patterns/README.md, Qwen).
#pragma once
#include <cstdint>

namespace duo {

class ThreadPool;

// Mean over rows of KL(softmax(z_full[r]) || softmax(z_mix[r])) (rows x vocab, row-major), summed
// in double; writes d KL / d z_mix = (softmax(z_mix) - softmax(z_full)) / rows into d_mix. Rows
// run in parallel on `pool` when given.
template <typename T>
double logit_kl(const T* z_full, const T* z_mix, int64_t rows, int64_t vocab, T* d_mix, ThreadPool* pool);

}  // namespace duo
