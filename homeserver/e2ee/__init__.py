"""End-to-end encryption: device keys, one-time keys, to-device messages, cross-signing, key backup."""
