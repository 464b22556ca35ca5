"""The pixel/latent grid: one definition of the 4k+1 rule, latent spans and the majority caption rule."""

from framecap_core import grid


def test_frames_and_latents_round_trip():
    assert grid.num_latents_for_frames(81) == 21
    assert grid.num_latents_for_frames(481) == 121
    assert grid.num_latents_for_frames(1) == 1
    for latents in (1, 2, 21, 121):
        assert grid.num_latents_for_frames(grid.num_frames_for_latents(latents)) == latents


def test_latent_frame_ranges_tile_the_video():
    assert list(grid.latent_frame_range(0)) == [0]
    assert list(grid.latent_frame_range(1)) == [1, 2, 3, 4]
    assert grid.latent_start_frame(11) == 41
    covered = [f for j in range(21) for f in grid.latent_frame_range(j)]
    assert covered == list(range(81))


def test_latent_owner_is_the_majority_and_ties_go_to_the_earlier():
    # latent 1 = frames 1..4: 0,0,1,1 (tie -> 0); latent 2 = frames 5..8: 1,1,1,2 (-> 1)
    owners = [0, 0, 0, 1, 1, 1, 1, 1, 2]
    assert grid.latent_owners(owners) == [0, 0, 1]
    # 3-1 majority for the later owner
    assert grid.latent_owners([0, 0, 1, 1, 1]) == [0, 1]


def test_size_multiple_and_latent_size_follow_the_model():
    assert grid.size_multiple() == 16
    assert grid.size_multiple(vae_scale=16, patch_size=(1, 2, 2)) == 32
    assert grid.latent_size(480, 832) == (60, 104)
    assert grid.latent_size(64, 64, vae_scale=16) == (4, 4)
