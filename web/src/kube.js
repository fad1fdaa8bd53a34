// The Kubernetes API as the signed-in user, through the upload service's same-origin
// pass-through (`/k8s/…`). The service forwards the user's `Authorization` header and adds
// nothing of its own, so RBAC decides what this page sees and may do.

export const API_PREFIX = '/k8s';
export const GROUP = 'imageimport.dev';
export const VERSION = 'v1alpha1';

export class KubeError extends Error {
  constructor(status, message, reason) {
    super(message);
    this.name = 'KubeError';
    this.status = status;
    this.reason = reason;
  }
}

export class Kube {
  /** `token`: a bearer token, or null when a proxy in front supplies Authorization. */
  constructor(token) {
    this.token = token;
  }

  authHeaders() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  async request(method, path, { body, accept, contentType } = {}) {
    // The pass-through refuses requests without this header (no cross-site use of a proxy's cookie).
    const headers = { Accept: accept ?? 'application/json', 'X-Imageimport-Console': '1', ...this.authHeaders() };
    if (body !== undefined) headers['Content-Type'] = contentType ?? 'application/json';
    let response;
    try {
      response = await fetch(`${API_PREFIX}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'same-origin',
      });
    } catch (e) {
      throw new KubeError(0, `the console's server did not answer (${e.message}); check the network`);
    }
    let data = null;
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message = data?.message ?? (text.trim() || response.statusText);
      throw new KubeError(response.status, message, data?.reason);
    }
    return data;
  }

  /** Who the API server says we are. */
  async whoAmI() {
    const review = await this.request('POST', '/apis/authentication.k8s.io/v1/selfsubjectreviews', {
      body: { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' },
    });
    return review?.status?.userInfo ?? {};
  }

  /** Whether the API server lets us `verb` `resource[/subresource]` in `namespace`. */
  async can(verb, resource, namespace, { group = GROUP, subresource, name } = {}) {
    const review = await this.request('POST', '/apis/authorization.k8s.io/v1/selfsubjectaccessreviews', {
      body: {
        apiVersion: 'authorization.k8s.io/v1',
        kind: 'SelfSubjectAccessReview',
        spec: { resourceAttributes: { group, resource, subresource, verb, namespace, name } },
      },
    });
    return { allowed: review?.status?.allowed === true, reason: review?.status?.reason ?? '' };
  }

  async namespaces() {
    const list = await this.request('GET', '/api/v1/namespaces', {
      accept: 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1',
    });
    return (list?.items ?? []).map((n) => n.metadata.name).sort();
  }

  imports(namespace) {
    return this.request('GET', `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(namespace)}/imageimports`);
  }

  getImport(namespace, name) {
    return this.request('GET', `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(namespace)}/imageimports/${encodeURIComponent(name)}`);
  }

  createImport(namespace, object) {
    return this.request('POST', `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(namespace)}/imageimports`, { body: object });
  }

  deleteImport(namespace, name) {
    return this.request('DELETE', `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(namespace)}/imageimports/${encodeURIComponent(name)}`, {
      body: { apiVersion: 'v1', kind: 'DeleteOptions', propagationPolicy: 'Background' },
    });
  }

  /**
   * The repository patterns the cluster policy lets `namespace` push to, from the upload
   * service itself (the policy is not readable by namespace users; the service answers only
   * someone who may create ImageImports there): `{restricted, patterns}`.
   */
  async allowedRepositories(namespace) {
    let response;
    try {
      response = await fetch(`/console/v1/namespaces/${encodeURIComponent(namespace)}/repositories`, {
        headers: { Accept: 'application/json', 'X-Imageimport-Console': '1', ...this.authHeaders() },
        cache: 'no-store',
        credentials: 'same-origin',
      });
    } catch (e) {
      throw new KubeError(0, `the console's server did not answer (${e.message})`);
    }
    if (!response.ok) throw new KubeError(response.status, (await response.text()).trim() || response.statusText);
    return response.json();
  }

  /** Names of registry credential Secrets (metadata only: their contents never reach the page). */
  async registrySecrets(namespace) {
    const list = await this.request(
      'GET',
      `/api/v1/namespaces/${encodeURIComponent(namespace)}/secrets?fieldSelector=${encodeURIComponent('type=kubernetes.io/dockerconfigjson')}`,
      { accept: 'application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1' },
    );
    return (list?.items ?? []).map((s) => s.metadata.name).sort();
  }
}
