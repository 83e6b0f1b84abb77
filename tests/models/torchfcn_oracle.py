"""An independent statement of pytorch-fcn's (torchfcn) FCN graphs, used as the test oracle.

Same parameter names and forward pass as torchfcn.FCN32s/16s/8s/8sAtOnce (hard-coded crops 19; 5, 27;
5, 9, 31; pad 100 on conv1_1; ceil-mode pooling), with a channel ``width`` so tests can run small.
"""

import torch
from torch import nn

CONVS = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
         ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv4_1", 256, 512),
         ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv5_1", 512, 512), ("conv5_2", 512, 512),
         ("conv5_3", 512, 512)]
POOL_AFTER = {"conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"}


class TorchFCN(nn.Module):
    def __init__(self, kind: str, n_class: int = 21, width: float = 1.0):
        super().__init__()
        self.kind = kind
        w = lambda c: 3 if c == 3 else int(c * width)  # noqa: E731
        for name, cin, cout in CONVS:
            setattr(self, name, nn.Conv2d(w(cin), w(cout), 3, padding=100 if name == "conv1_1" else 1))
        fc = int(4096 * width)
        self.fc6 = nn.Conv2d(w(512), fc, 7)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        if kind == "32s":
            self.upscore = nn.ConvTranspose2d(n_class, n_class, 64, stride=32, bias=False)
        else:
            self.score_pool4 = nn.Conv2d(w(512), n_class, 1)
            self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
            if kind == "16s":
                self.upscore16 = nn.ConvTranspose2d(n_class, n_class, 32, stride=16, bias=False)
            else:
                self.score_pool3 = nn.Conv2d(w(256), n_class, 1)
                self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
                self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x):
        h = x
        pools = {}
        for name, _, _ in CONVS:
            h = torch.relu(getattr(self, name)(h))
            if name in POOL_AFTER:
                h = self.pool(h)
                pools[name[:5]] = h
        h = torch.relu(self.fc6(h))
        h = torch.relu(self.fc7(h))
        h = self.score_fr(h)
        if self.kind == "32s":
            return self.upscore(h)[:, :, 19:19 + x.size(2), 19:19 + x.size(3)]
        at_once = self.kind == "8s_atonce"
        upscore2 = self.upscore2(h)
        pool4 = pools["conv4"] * 0.01 if at_once else pools["conv4"]
        s4 = self.score_pool4(pool4)[:, :, 5:5 + upscore2.size(2), 5:5 + upscore2.size(3)]
        h = upscore2 + s4
        if self.kind == "16s":
            return self.upscore16(h)[:, :, 27:27 + x.size(2), 27:27 + x.size(3)]
        up4 = self.upscore_pool4(h)
        pool3 = pools["conv3"] * 0.0001 if at_once else pools["conv3"]
        s3 = self.score_pool3(pool3)[:, :, 9:9 + up4.size(2), 9:9 + up4.size(3)]
        return self.upscore8(up4 + s3)[:, :, 31:31 + x.size(2), 31:31 + x.size(3)]
