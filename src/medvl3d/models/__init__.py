"""medvl3d.models"""
