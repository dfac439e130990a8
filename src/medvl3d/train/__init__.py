"""medvl3d.train"""
