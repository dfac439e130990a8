"""medvl3d.data"""
