"""The ladder's figures name what they show: the v-sweep panels the fusion chosen per split, the query
figures their relevance protocol; results.md numbers keep their digits."""
import matplotlib

from retrieval.experiments.ladder import plots
from retrieval.core.report import markdown_table

matplotlib.use("Agg")


def test_v_sweep_panels_name_the_chosen_fusion(tmp_path, monkeypatch):
    sweeps = {"oxford5k_subset (official)": {"SV": {"fold 0": {0.5: 0.7, 1.0: 0.68}, "all": {0.5: 0.72, 1.0: 0.69}}},
              "coil100-gldv2": {"E5": {"all": {0.5: 0.9, 1.0: 0.93}}}}
    chosen = {"oxford5k_subset (official)": {"SV": {"fold 0": "linear saturate T=40 v=0.8",
                                                    "fold 1": "linear saturate T=40 v=0.9"}},
              "coil100-gldv2": {"E5": {"Private": "none (global order)", "Public": "none (global order)"}}}
    titles = []
    real_save = plots.save_figure

    def keep_titles(fig, path, **kw):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_title())
        return real_save(fig, path, **kw)

    monkeypatch.setattr(plots, "save_figure", keep_titles)
    path = plots.v_sweep_plot(sweeps, tmp_path / "v_sweep.png", chosen)
    assert path.stat().st_size > 5000
    assert titles[0].startswith("SV, oxford5k_subset (official)\nchosen: fold 0: linear saturate T=40 v=0.8;")
    assert "fold 1: linear saturate T=40 v=0.9" in titles[0].replace("\n", " ")
    assert titles[1].replace("\n", " ") == "E5, coil100-gldv2 chosen: Private: none (global order); Public: none (global order)"
    assert plots.sweep_title("d", "E6") == "E6, d"   # without choices: as before


def test_query_figures_are_named_by_their_protocol():
    assert plots.query_figure_name("coil100-gldv2", "gldv2") == "queries_coil100-gldv2_gldv2.png"
    assert (plots.query_figure_name("oxford5k_subset (official: good + ok, junk ignored)", "oxford")
            == "queries_oxford5k_subset_official.png")
    assert (plots.query_figure_name("oxford5k_subset (landmark-level: every image of the landmark)", "landmark")
            == "queries_oxford5k_subset_landmark.png")


def test_results_md_numbers_keep_four_significant_digits():
    table = markdown_table([{"map": 0.4, "seconds": 12.3456}, {"map": 0.86574, "seconds": 1234.5}])
    assert "| 0.4000 | 12.35 |" in table and "| 0.8657 | 1234 |" in table
