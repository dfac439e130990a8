"""medvl3d.data.synth"""
