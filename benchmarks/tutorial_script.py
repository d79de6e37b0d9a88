"""The tutorial's own MNIST ResNet script, as it is taught: the baseline `tutorial_vs_resgrad.py --end-to-end` times.

    python benchmarks/tutorial_script.py [DATA_DIR] [EPOCHS] [IMAGES]   # default: ./data, 1 epoch, all 60,000

Its model is resgrad's ``seed-residual`` (5x5 conv 1->16, ReLU, max-pool, a residual block,
5x5 conv 16->32, ReLU, max-pool, a residual block, linear 512->10); its loop is the
tutorial's: ``DataLoader`` over ``torchvision.datasets.MNIST`` with ``ToTensor`` and
``Normalize``, batch 64, shuffled, SGD(lr=0.01, momentum=0.5), ``loss.item()`` every step,
then one pass over the 10,000 test images under ``torch.no_grad()``. Nothing here is
resgrad's: it imports torch and torchvision only.
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import datasets, transforms

batch_size = 64
root = sys.argv[1] if len(sys.argv) > 1 else "data"
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
images = int(sys.argv[3]) if len(sys.argv) > 3 else None  # the first IMAGES training images (the scripts' tests)
transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
train_dataset = datasets.MNIST(root=root, train=True, download=True, transform=transform)
if images is not None:
    train_dataset = torch.utils.data.Subset(train_dataset, range(images))
train_loader = torch.utils.data.DataLoader(train_dataset, shuffle=True, batch_size=batch_size)
test_dataset = datasets.MNIST(root=root, train=False, download=True, transform=transform)
test_loader = torch.utils.data.DataLoader(test_dataset, shuffle=False, batch_size=batch_size)


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        return F.relu(x + y)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.mp = nn.MaxPool2d(2)
        self.rblock1 = ResidualBlock(16)
        self.rblock2 = ResidualBlock(32)
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        in_size = x.size(0)
        x = self.mp(F.relu(self.conv1(x)))
        x = self.rblock1(x)
        x = self.mp(F.relu(self.conv2(x)))
        x = self.rblock2(x)
        x = x.view(in_size, -1)
        return self.fc(x)


model = Net()
criterion = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)


def train(epoch):
    running_loss = 0.0
    for batch_idx, data in enumerate(train_loader, 0):
        inputs, target = data
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, target)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        if batch_idx % 300 == 299:
            print(f"[{epoch + 1}, {batch_idx + 1:5d}] loss: {running_loss / 300:.3f}")
            running_loss = 0.0


def test():
    correct = 0
    total = 0
    with torch.no_grad():
        for data in test_loader:
            images, labels = data
            outputs = model(images)
            _, predicted = torch.max(outputs.data, dim=1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    print(f"accuracy on test set: {100 * correct // total} %")


for epoch in range(epochs):
    train(epoch)
    test()
