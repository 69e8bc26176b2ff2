def test_healthz_reports_database_and_redis(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_healthz_says_degraded_when_redis_is_unreachable(tmp_path, redis_url):
    from tests.conftest import make_app
    from webapp.extensions import db
    from jobs.redis_server import free_port

    app = make_app(f"sqlite:///{tmp_path / 'h.sqlite3'}", f"redis://127.0.0.1:{free_port()}/0")
    with app.app_context():
        db.create_all()
        response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["redis"].startswith("error")
