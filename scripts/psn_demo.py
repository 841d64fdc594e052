"""The PSN family in one minute: SpikingJelly's documented examples, run on common.neurons.

    python scripts/psn_demo.py

Each example is the one in SpikingJelly's documentation with `common.neurons`
in place of `spikingjelly.activation_based.neuron`; the errors it prints are 0.
"""

import torch
from spikingjelly.activation_based import functional

from common import neurons as neuron


def psn_example():
    T = 4
    N = 2
    psn = neuron.PSN(T=T)
    x_seq = torch.rand([T, N]) + 2.0
    y_seq = psn(x_seq)
    print(y_seq)


def masked_psn_lambda_example():
    T = 4
    masked_psn = neuron.MaskedPSN(k=2, T=T)
    epochs = 4
    for epoch in range(epochs):
        masked_psn.lambda_ = (epoch + 1) / epochs
        print(f"epoch={epoch}, weight = ")
        with torch.no_grad():
            print(masked_psn.masked_weight())


def masked_psn_step_mode_example():
    T = 64
    N = 64
    masked_psn = neuron.MaskedPSN(lambda_init=1.0, k=32, T=T, step_mode="m")
    x_seq = torch.rand([T, N]) + 2.0
    y_seq_m = masked_psn(x_seq)
    masked_psn.step_mode = "s"
    y_seq_s = functional.multi_step_forward(x_seq, masked_psn)
    print("firing rate = ", y_seq_m.mean())
    print("The error of two step modes is", (y_seq_m - y_seq_s).abs().sum())


def sliding_psn_backend_example():
    T = 64
    N = 64
    spsn = neuron.SlidingPSN(k=2, step_mode="m", backend="gemm")
    x_seq = torch.rand([T, N])
    y_seq_gemm = spsn(x_seq)
    spsn.backend = "conv"
    y_seq_conv = spsn(x_seq)
    print("firing rate = ", y_seq_gemm.mean())
    print("The error of two backends is", (y_seq_gemm - y_seq_conv).abs().sum())


def sliding_psn_step_mode_example():
    T = 64
    N = 64
    spsn = neuron.SlidingPSN(k=2, step_mode="m")
    x_seq = torch.rand([T, N])
    y_seq_m = spsn(x_seq)
    spsn.step_mode = "s"
    y_seq_s = functional.multi_step_forward(x_seq, spsn)
    print("firing rate = ", y_seq_m.mean())
    print("The error of two step modes is", (y_seq_m - y_seq_s).abs().sum())


if __name__ == "__main__":
    torch.manual_seed(0)
    for example in (psn_example, masked_psn_lambda_example, masked_psn_step_mode_example,
                    sliding_psn_backend_example, sliding_psn_step_mode_example):
        print(f"--- {example.__name__}")
        example()
