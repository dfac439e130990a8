"""medvl3d.losses"""
