"""medvl3d.eval"""
