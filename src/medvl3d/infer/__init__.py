"""medvl3d.infer"""
